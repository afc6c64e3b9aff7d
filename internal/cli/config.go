package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// The client config file holds named contexts (a manager, a token, a
// project), like kubectl's kubeconfig. Its path is $NEXUS_CONFIG, else
// $XDG_CONFIG_HOME/nexus/config.yaml, else ~/.config/nexus/config.yaml.
// It holds tokens, so it is written 0600.
type clientConfig struct {
	CurrentContext string          `json:"current-context,omitempty"`
	Contexts       []clientContext `json:"contexts,omitempty"`
}

type clientContext struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Token   string `json:"token,omitempty"`
	Project string `json:"project,omitempty"`
	// CA is a PEM file of the CA that signed the manager's certificate.
	CA string `json:"ca,omitempty"`
}

func configPath(e env) (string, error) {
	if p := e("NEXUS_CONFIG"); p != "" {
		return p, nil
	}
	if x := e("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "nexus", "config.yaml"), nil
	}
	home := e("HOME")
	if home == "" {
		var err error
		if home, err = os.UserHomeDir(); err != nil {
			return "", fmt.Errorf("no config file path: set NEXUS_CONFIG or HOME: %w", err)
		}
	}
	return filepath.Join(home, ".config", "nexus", "config.yaml"), nil
}

// loadConfig reads the config file; a missing file is an empty config.
func loadConfig(e env) (clientConfig, string, error) {
	var c clientConfig
	p, err := configPath(e)
	if err != nil {
		return c, "", err
	}
	raw, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return c, p, nil
	}
	if err != nil {
		return c, p, fmt.Errorf("read config %s: %w", p, err)
	}
	if len(raw) > 1<<20 {
		return c, p, fmt.Errorf("config %s is larger than 1 MiB", p)
	}
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return c, p, fmt.Errorf("config %s: %w", p, err)
	}
	return c, p, nil
}

// save writes the config atomically with mode 0600.
func (c clientConfig) save(p string) error {
	raw, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".config-*.yaml")
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		return fmt.Errorf("write config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return os.Rename(tmp.Name(), p)
}

func (c clientConfig) find(name string) (clientContext, bool) {
	i := slices.IndexFunc(c.Contexts, func(x clientContext) bool { return x.Name == name })
	if i < 0 {
		return clientContext{}, false
	}
	return c.Contexts[i], true
}

// names lists the contexts' names (for errors and completion).
func (c clientConfig) names() string {
	var n []string
	for _, x := range c.Contexts {
		n = append(n, x.Name)
	}
	if len(n) == 0 {
		return "none; add one with nexus context add"
	}
	return strings.Join(n, ", ")
}

package model

// Args are the firecracker binary's command-line flags that Nexus uses.
// Firecracker takes "--name value" only (never "--name=value").
type Args struct {
	APISock       string // --api-sock
	ID            string // --id: 1-64 alphanumerics or '-'
	ConfigFile    string // --config-file: configure and boot from a JSON file
	NoAPI         bool   // --no-api (requires ConfigFile)
	LogPath       string // --log-path
	Level         string // --level
	ShowLevel     bool   // --show-level
	ShowLogOrigin bool   // --show-log-origin
	MetricsPath   string // --metrics-path (a later PUT /metrics then fails)
	BootTimer     bool   // --boot-timer
	EnablePCI     bool   // --enable-pci (v1.16+, needed for hotplug)
}

// Argv renders the flags in firecracker's syntax.
func (a Args) Argv() []string {
	var out []string
	str := func(flag, v string) {
		if v != "" {
			out = append(out, flag, v)
		}
	}
	boolean := func(flag string, v bool) {
		if v {
			out = append(out, flag)
		}
	}
	str("--api-sock", a.APISock)
	str("--id", a.ID)
	str("--config-file", a.ConfigFile)
	boolean("--no-api", a.NoAPI)
	str("--log-path", a.LogPath)
	str("--level", a.Level)
	boolean("--show-level", a.ShowLevel)
	boolean("--show-log-origin", a.ShowLogOrigin)
	str("--metrics-path", a.MetricsPath)
	boolean("--boot-timer", a.BootTimer)
	boolean("--enable-pci", a.EnablePCI)
	return out
}

// ValidInstanceID reports whether id is acceptable to --id.
func ValidInstanceID(id string) bool {
	if len(id) < 1 || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// MaxPayloadSize is firecracker's default --http-api-max-payload-size.
const MaxPayloadSize = 51200

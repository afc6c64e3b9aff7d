package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/apitypes"
)

// registrar joins the agent to its manager and keeps reporting: register
// once (again after the manager forgets the host), then heartbeat with
// capacity and allocation. Failures back off; the agent serves regardless.
type registrar struct {
	o        Options
	url      string
	a        *Agent
	log      *slog.Logger
	hc       *http.Client
	interval time.Duration
	hostID   string
}

func newRegistrar(o Options, url string, a *Agent, log *slog.Logger) *registrar {
	iv := o.Heartbeat
	if iv <= 0 {
		iv = 5 * time.Second
	}
	return &registrar{o: o, url: url, a: a, log: log, interval: iv, hc: &http.Client{Timeout: 10 * time.Second}}
}

func (r *registrar) run(ctx context.Context) {
	backoff := 500 * time.Millisecond
	for {
		var err error
		if r.hostID == "" {
			err = r.register(ctx)
		} else {
			err = r.heartbeat(ctx)
		}
		wait := r.interval
		if err != nil {
			r.log.Warn("manager not reached", "manager", r.o.Manager, "err", err)
			wait = backoff
			backoff = min(backoff*2, 30*time.Second)
		} else {
			backoff = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (r *registrar) register(ctx context.Context) error {
	c := r.a.Capacity()
	var out apitypes.RegisterHostResponse
	err := r.post(ctx, "/v1/hosts/register", apitypes.RegisterHostRequest{
		Name: r.o.Name, Addr: r.url, Version: r.o.Version,
		Capacity: apitypes.Resources{Vcpu: c.Total.Vcpu, MemMib: c.Total.MemMib},
	}, &out)
	if err != nil {
		return err
	}
	r.hostID = out.ID
	if out.HeartbeatIntervalMs > 0 && r.o.Heartbeat <= 0 {
		r.interval = time.Duration(out.HeartbeatIntervalMs) * time.Millisecond
	}
	r.log.Info("registered with manager", "manager", r.o.Manager, "host_id", r.hostID)
	return r.heartbeat(ctx)
}

func (r *registrar) heartbeat(ctx context.Context) error {
	c := r.a.Capacity()
	err := r.post(ctx, "/v1/hosts/"+r.hostID+"/heartbeat", apitypes.HeartbeatRequest{
		Capacity:  apitypes.Resources{Vcpu: c.Total.Vcpu, MemMib: c.Total.MemMib},
		Allocated: apitypes.Resources{Vcpu: c.Allocated.Vcpu, MemMib: c.Allocated.MemMib},
		VMs:       c.VMs,
	}, nil)
	if se, ok := err.(*statusError); ok && se.status == http.StatusNotFound {
		r.hostID = "" // the manager forgot us: register again
	}
	return err
}

type statusError struct {
	status int
	body   string
}

func (e *statusError) Error() string { return fmt.Sprintf("%d: %s", e.status, e.body) }

func (r *registrar) post(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(r.o.Manager, "/")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.o.Token)
	resp, err := r.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return &statusError{status: resp.StatusCode, body: strings.TrimSpace(string(raw))}
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

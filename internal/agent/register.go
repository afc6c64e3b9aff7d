package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
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
	hostID   atomic.Value // string; "" until registered

	// managers are the manager URLs (AGENT_MANAGER may list several,
	// comma-separated, for a fleet without a load balancer); cur is the
	// one in use, moved on when it fails.
	managers []string
	cur      atomic.Int32
}

func (r *registrar) id() string {
	s, _ := r.hostID.Load().(string)
	return s
}

func newRegistrar(o Options, url string, a *Agent, log *slog.Logger) *registrar {
	iv := o.Heartbeat
	if iv <= 0 {
		iv = 5 * time.Second
	}
	var ms []string
	for _, m := range strings.Split(o.Manager, ",") {
		if m = strings.TrimSuffix(strings.TrimSpace(m), "/"); m != "" {
			ms = append(ms, m)
		}
	}
	return &registrar{o: o, url: url, a: a, log: log, interval: iv, managers: ms, hc: &http.Client{Timeout: 10 * time.Second}}
}

func (r *registrar) run(ctx context.Context) {
	backoff := 500 * time.Millisecond
	go r.reportExits(ctx)
	for {
		var err error
		if r.id() == "" {
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
		Name: r.o.Name, Addr: r.url, Version: r.o.Version, VMM: r.a.cfg.VMMVersion,
		Capacity: apitypes.Resources{Vcpu: c.Total.Vcpu, MemMib: c.Total.MemMib},
	}, &out)
	if err != nil {
		return err
	}
	r.hostID.Store(out.ID)
	if out.HeartbeatIntervalMs > 0 && r.o.Heartbeat <= 0 {
		r.interval = time.Duration(out.HeartbeatIntervalMs) * time.Millisecond
	}
	r.log.Info("registered with manager", "manager", r.o.Manager, "host_id", out.ID)
	return r.heartbeat(ctx)
}

func (r *registrar) heartbeat(ctx context.Context) error {
	c := r.a.Capacity()
	err := r.post(ctx, "/v1/hosts/"+r.id()+"/heartbeat", apitypes.HeartbeatRequest{
		Capacity:  apitypes.Resources{Vcpu: c.Total.Vcpu, MemMib: c.Total.MemMib},
		Allocated: apitypes.Resources{Vcpu: c.Allocated.Vcpu, MemMib: c.Allocated.MemMib},
		VMs:       c.VMs,
	}, nil)
	if se, ok := err.(*statusError); ok && se.status == http.StatusNotFound {
		r.hostID.Store("") // the manager forgot us: register again
	}
	return err
}

// reportExits tells the manager about every VMM that ended without the
// agent ending it (a crash, a kill by hand), as soon as it happens.
func (r *registrar) reportExits(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ex := <-r.a.sup.Exits():
			if ex.Expected || r.id() == "" {
				continue
			}
			ev := apitypes.HostEvent{Kind: "vmm_exit", VMID: ex.VMID, PID: ex.PID, Status: ex.Status, At: ex.At}
			if err := r.post(ctx, "/v1/hosts/"+r.id()+"/events", ev, nil); err != nil {
				r.log.Warn("could not report vmm exit; the manager's next pass will see it", "vm_id", ex.VMID, "err", err)
			}
		}
	}
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
	i := int(r.cur.Load()) % len(r.managers)
	err = r.postTo(ctx, r.managers[i], path, b, out)
	var se *statusError
	if err != nil && len(r.managers) > 1 && (!errors.As(err, &se) || se.status >= 500) {
		// That manager is down: the next one shares the same store.
		r.cur.CompareAndSwap(int32(i), int32((i+1)%len(r.managers)))
	}
	return err
}

func (r *registrar) postTo(ctx context.Context, base, path string, b []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(b))
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

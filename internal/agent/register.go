package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/jsonhttp"
	"github.com/nexus-microvm/nexus/internal/pki"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// registrar joins the agent to its manager and keeps reporting: register
// once (again after the manager forgets the host), then heartbeat with
// capacity and allocation. Failures back off; the agent serves regardless.
type registrar struct {
	o        Options
	url      string
	a        *Agent
	log      *slog.Logger
	interval time.Duration
	hostID   atomic.Value // string; "" until registered

	// managers are the manager URLs (AGENT_MANAGER may list several,
	// comma-separated, for a fleet without a load balancer); cur is the
	// one in use, moved on when it fails.
	managers []*jsonhttp.Caller
	cur      atomic.Int32
}

func (r *registrar) id() string {
	s, _ := r.hostID.Load().(string)
	return s
}

func newRegistrar(o Options, url string, a *Agent, tlsFiles *pki.Reloader, log *slog.Logger) *registrar {
	iv := o.Heartbeat
	if iv <= 0 {
		iv = 5 * time.Second
	}
	var ms []*jsonhttp.Caller
	tr := jsonhttp.NewTransport()
	if tlsFiles != nil {
		// The agent's certificate authenticates it to the manager; the CA
		// checks the manager's. Both reload when rotated.
		tlsFiles.ConfigureTransport(tr)
	}
	hc := &http.Client{Transport: tr}
	for _, m := range strings.Split(o.Manager, ",") {
		if m = strings.TrimSuffix(strings.TrimSpace(m), "/"); m != "" {
			ms = append(ms, &jsonhttp.Caller{Base: m, Token: o.Token, HC: hc, Timeout: 10 * time.Second})
		}
	}
	return &registrar{o: o, url: url, a: a, log: log, interval: iv, managers: ms}
}

func (r *registrar) run(ctx context.Context) {
	backoff := 500 * time.Millisecond
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.reportExits(ctx) })
	wg.Go(func() { r.reportGuests(ctx) })
	defer func() {
		for _, m := range r.managers {
			m.CloseIdle()
		}
	}()
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
	req := apitypes.RegisterHostRequest{
		Name: r.o.Name, Addr: r.url, Version: r.o.Version, VMM: r.a.cfg.VMMVersion,
		Capacity: apitypes.Resources{Vcpu: c.Total.Vcpu, MemMib: c.Total.MemMib},
	}
	if br := r.a.cfg.Bridge; br.Subnet.IsValid() && br.Gateway.IsValid() {
		// The manager gives each VM of this host an address of it.
		req.Network = &apitypes.HostNetwork{Subnet: br.Subnet.Masked().String(), Gateway: br.Gateway.Addr().String()}
	}
	var out apitypes.HostRegistration
	err := r.post(ctx, "/v1/hosts/register", req, &out)
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
	if jsonhttp.IsStatus(err, http.StatusNotFound) {
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
			r.a.guests.ended(ex.VMID, ex.PID)
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

// reportGuests tells the manager what guests said on their consoles: it
// is what sets a VM's guest_ready_at, so a report is tried a few times
// (on the next manager of the list when one fails) before it is given up.
func (r *registrar) reportGuests(ctx context.Context) {
	for {
		var rep GuestReport
		select {
		case <-ctx.Done():
			return
		case rep = <-r.a.guests.Reports():
		}
		ev := apitypes.HostEvent{Kind: apitypes.EventGuestReady, VMID: rep.VMID, PID: rep.PID, At: rep.At}
		if !rep.Ready {
			ev.Kind, ev.Reason = apitypes.EventGuestFailed, clipText(rep.Reason, 512)
		}
		var err error
		for attempt, wait := 0, 200*time.Millisecond; attempt < 4; attempt, wait = attempt+1, wait*2 {
			if id := r.id(); id != "" {
				if err = r.post(ctx, "/v1/hosts/"+id+"/events", ev, nil); err == nil {
					break
				}
			} else {
				err = errors.New("not registered yet")
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		if err != nil {
			r.log.Warn("could not report what the guest said; its VM shows no readiness for this run", "vm_id", rep.VMID, "kind", ev.Kind, "err", err)
		}
	}
}

// clipText cuts s to at most n bytes, on a rune boundary.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// post sends to the manager in use and moves on to the next one when it
// cannot be reached or fails (5xx): they all share one store.
func (r *registrar) post(ctx context.Context, path string, in, out any) error {
	i := int(r.cur.Load()) % len(r.managers)
	err := r.managers[i].Do(ctx, http.MethodPost, path, nil, in, out)
	var ae *apierr.Error
	if err != nil && len(r.managers) > 1 && (!errors.As(err, &ae) || ae.Status >= 500) {
		r.cur.CompareAndSwap(int32(i), int32((i+1)%len(r.managers)))
	}
	return err
}

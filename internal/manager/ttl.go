package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Bounds of a time to live (docs/sandboxes.md).
const (
	MinTTL = time.Second
	MaxTTL = 365 * 24 * time.Hour
)

// SystemActor is the audit actor of what the manager does on its own
// (expiry, pool refills): no token asked for it.
const SystemActor = "system (reconciler)"

// expiryBatch bounds the VMs one expiry sweep handles; the next sweep, a
// second later, takes the rest.
const expiryBatch = 200

// parseTTL checks a ttl and on_expiry and returns when the VM expires
// (nil without a ttl) and what happens then.
func parseTTL(now time.Time, e apitypes.Expiry) (*time.Time, string, error) {
	if e.TTL == "" {
		if e.OnExpiry != "" {
			return nil, "", invalid("on_expiry needs a ttl").suggest(`add "ttl", e.g. "ttl": "2h"`)
		}
		return nil, "", nil
	}
	d, err := parseDuration(e.TTL)
	if err != nil {
		return nil, "", err
	}
	onExpiry, err := checkOnExpiry(e.OnExpiry, store.ExpiryDelete)
	if err != nil {
		return nil, "", err
	}
	at := now.Add(d)
	return &at, onExpiry, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d < MinTTL || d > MaxTTL {
		return 0, invalid("ttl %q: want a duration from %s to %s", s, MinTTL, MaxTTL).
			suggest(`use Go duration syntax, e.g. "90s", "30m" or "2h"`)
	}
	return d, nil
}

func checkOnExpiry(v, def string) (string, error) {
	switch v {
	case "":
		return def, nil
	case store.ExpiryStop, store.ExpiryDelete:
		return v, nil
	}
	return "", invalid("on_expiry %q: want stop or delete", v)
}

// ExtendTTL sets the VM to expire ttl from now (shorter or longer than
// before), and optionally changes what happens then.
func (s *VMs) ExtendTTL(ctx context.Context, scope Scope, id string, req apitypes.ExtendTTLRequest) (store.VM, error) {
	d, err := parseDuration(req.TTL)
	if err != nil {
		return store.VM{}, err
	}
	if _, err := checkOnExpiry(req.OnExpiry, ""); err != nil {
		return store.VM{}, err
	}
	vm, unlock, err := s.lockedVM(ctx, scope, id)
	if err != nil {
		return vm, err
	}
	defer unlock()
	if vm.State == store.VMDeleting {
		return vm, conflict("vm_deleting", "vm %s is being deleted", id)
	}
	at := s.now().Add(d)
	vm, err = s.update(ctx, id, func(v *store.VM) error {
		v.ExpiresAt = &at
		v.OnExpiry = firstNonEmpty(req.OnExpiry, v.OnExpiry, store.ExpiryDelete)
		return nil
	})
	if err != nil {
		return vm, err
	}
	s.event(ctx, id, store.LevelInfo, "expires at %s (ttl %s, then %s)", at.UTC().Format(time.RFC3339), d, vm.OnExpiry)
	return vm, nil
}

// expireDue stops or deletes the VMs whose time to live is over, a few
// at a time, and returns how many it acted on. Each is audited as the
// system's action.
func (r *Reconciler) expireDue(ctx context.Context) int {
	s := r.s
	due, err := s.st.ListExpiredVMs(ctx, s.now(), expiryBatch)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("expiry sweep: list expired vms", "err", err)
		}
		return 0
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(r.cfg.HostParallel, 8))
	acted := 0
	for _, vm := range due {
		if vm.State == store.VMDeleting {
			continue // a delete is under way; the host pass finishes it
		}
		acted++
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			actx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout)
			defer cancel()
			err := r.act(actx, vm, r.expire)
			result := "ok"
			if err != nil {
				result = "error"
				s.log.Warn("expiry failed; the next sweep tries again", "vm_id", vm.ID, "err", err)
			}
			r.mActions.WithLabelValues("expire", result).Inc()
		})
	}
	wg.Wait()
	return acted
}

// expire acts on one expired VM; the caller holds its lock and fresh is
// its current row.
func (r *Reconciler) expire(ctx context.Context, fresh store.VM) error {
	s := r.s
	now := s.now()
	if fresh.ExpiresAt == nil || now.Before(*fresh.ExpiresAt) || fresh.State == store.VMDeleting {
		return nil // extended or cleared meanwhile
	}
	action := fresh.OnExpiry
	if action != store.ExpiryStop {
		action = store.ExpiryDelete
	}
	summary := func(vm store.VM) json.RawMessage {
		b, _ := json.Marshal(map[string]any{"id": vm.ID, "name": vm.Name, "project": vm.Project, "state": vm.State,
			"desired_state": vm.DesiredState, "host_id": vm.HostID, "expires_at": vm.ExpiresAt, "on_expiry": action})
		return b
	}
	auditID, aerr := s.st.BeginAudit(ctx, store.AuditEntry{
		Actor: SystemActor, Action: "vm.expire", Resource: "vm", ResourceID: fresh.ID, Before: summary(fresh),
	})
	if aerr != nil {
		s.log.Error("audit: could not record expiry", "vm_id", fresh.ID, "err", aerr)
	}
	complete := func(after json.RawMessage, err error) {
		if aerr != nil {
			return
		}
		result, text := store.AuditSuccess, ""
		if err != nil {
			result, text = store.AuditFailure, err.Error()
		}
		if cerr := s.st.CompleteAudit(context.WithoutCancel(ctx), auditID, result, after, text); cerr != nil {
			s.log.Error("audit: could not complete expiry row", "audit_id", auditID, "err", cerr)
		}
	}
	late := now.Sub(*fresh.ExpiresAt).Round(time.Millisecond)
	s.event(ctx, fresh.ID, store.LevelInfo, "time to live over (expired at %s, acted %s later): %s",
		fresh.ExpiresAt.UTC().Format(time.RFC3339Nano), late, map[string]string{store.ExpiryStop: "stopping", store.ExpiryDelete: "deleting"}[action])
	if action == store.ExpiryDelete {
		err := s.deleteLocked(ctx, fresh, false)
		complete(nil, err)
		if err != nil {
			return fmt.Errorf("expire vm %s: %w", fresh.ID, err)
		}
		return nil
	}
	// A stopped VM stays, without an expiry: a later start is the user's.
	cur, err := s.update(ctx, fresh.ID, func(v *store.VM) error { v.ExpiresAt, v.OnExpiry = nil, ""; return nil })
	if err == nil {
		cur, err = s.stopLocked(ctx, cur)
	}
	complete(summary(cur), err)
	if err != nil {
		return fmt.Errorf("expire vm %s: %w", fresh.ID, err)
	}
	return nil
}

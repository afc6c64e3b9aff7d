package manager

import (
	"context"
	"fmt"
	"sync"
)

// batchParallel is how many VMs of one call (instantiate with count) are
// made at once.
const batchParallel = 8

// batchNames are the names of count VMs of one call: name itself, or
// name-1 … name-N; each must be a valid VM name.
func batchNames(name string, count int) ([]string, error) {
	if count == 0 {
		count = 1
	}
	if count < 1 || count > MaxInstances {
		return nil, invalid("count must be between 1 and %d", MaxInstances)
	}
	names := []string{name}
	if count > 1 {
		names = names[:0]
		for i := 1; i <= count; i++ {
			names = append(names, fmt.Sprintf("%s-%d", name, i))
		}
	}
	for _, n := range names {
		if !nameRE.MatchString(n) {
			return nil, invalid("VM name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", n)
		}
	}
	return names, nil
}

// runBatch calls one for 0 … n-1, batchParallel at a time; after the
// first failure it starts no more and waits for those under way. It
// returns each call's error.
func runBatch(n int, one func(i int) error) []error {
	errs := make([]error, n)
	var failed sync.Once
	stop := make(chan struct{})
	sem := make(chan struct{}, batchParallel)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case <-stop:
		case sem <- struct{}{}:
		}
		select {
		case <-stop:
			continue
		default:
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if errs[i] = one(i); errs[i] != nil {
				failed.Do(func() { close(stop) })
			}
		})
	}
	wg.Wait()
	return errs
}

// batchFailed words the first failure of a batch, after deleting the VMs
// of the call again (all or nothing); nil when every call succeeded.
func (s *VMs) batchFailed(ctx context.Context, errs []error, names, ids []string, from string) error {
	for i, err := range errs {
		if err == nil {
			continue
		}
		rolled := s.rollbackBatch(ctx, ids)
		what := fmt.Sprintf("vm %s", names[i])
		if len(names) > 1 {
			what = fmt.Sprintf("vm %s (%d of %d)", names[i], i+1, len(names))
		}
		if e, ok := AsError(err); ok {
			c := *e
			c.Message = fmt.Sprintf("%s from %s: %s; %s", what, from, e.Message, rolled)
			return &c
		}
		return fmt.Errorf("%s from %s: %w; %s", what, from, err, rolled)
	}
	return nil
}

// rollbackBatch deletes the VMs of a failed batch and says how it went.
func (s *VMs) rollbackBatch(ctx context.Context, ids []string) string {
	ctx = context.WithoutCancel(ctx)
	var left []string
	for _, id := range ids {
		if err := s.DeleteVM(ctx, All, id); err != nil {
			if e, ok := AsError(err); ok && e.Kind == KindNotFound {
				continue
			}
			left = append(left, id)
			s.log.Error("batch rollback: could not delete vm; the reconciler retries", "vm_id", id, "err", err)
		}
	}
	if len(left) > 0 {
		return fmt.Sprintf("%d VM(s) of this call could not be deleted yet and are being deleted: %v", len(left), left)
	}
	if len(ids) == 1 {
		return "nothing was left behind"
	}
	return fmt.Sprintf("the %d VMs of this call were deleted again", len(ids))
}

package keyed

import (
	"sync"
	"testing"
)

func TestMutexSerialisesPerKeyAndForgets(t *testing.T) {
	var k Mutex
	var wg sync.WaitGroup
	counts := map[string]int{}
	var mu sync.Mutex // guards counts across keys; each key's += is under its own lock
	for i := range 200 {
		key := []string{"a", "b", "c"}[i%3]
		wg.Go(func() {
			unlock := k.Lock(key)
			defer unlock()
			mu.Lock()
			counts[key]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if counts["a"]+counts["b"]+counts["c"] != 200 {
		t.Fatalf("counts = %v", counts)
	}
	if n := k.Len(); n != 0 {
		t.Fatalf("%d keys remembered after every lock was released", n)
	}
	unlock := k.Lock("x")
	if _, ok := k.TryLock("x"); ok {
		t.Fatal("TryLock took a held key")
	}
	u2, ok := k.TryLock("y")
	if !ok {
		t.Fatal("TryLock refused a free key")
	}
	u2()
	unlock()
	if n := k.Len(); n != 0 {
		t.Fatalf("%d keys remembered after TryLock", n)
	}
}

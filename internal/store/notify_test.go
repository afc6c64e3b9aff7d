package store_test

import (
	"context"
	"testing"
	"time"
)

var notifyBehaviours = []behaviour{
	{"notify/reaches_other_store_and_self", func(t *testing.T, e *env) {
		// A second store on the same database stands for another manager.
		other := openStore(t, e.dsn)
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		gotOther := make(chan string, 4)
		gotSelf := make(chan string, 4)
		go other.Listen(lctx, "nexus_tokens", func(p string) { gotOther <- p })
		go e.s.Listen(lctx, "nexus_tokens", func(p string) { gotSelf <- p })
		// Listening starts asynchronously: keep notifying until heard.
		deadline := time.After(10 * time.Second)
		heard := map[string]bool{}
		for len(heard) < 2 {
			if err := e.s.Notify(ctx, "nexus_tokens", "tok-1"); err != nil {
				t.Fatal(err)
			}
			select {
			case p := <-gotSelf:
				if p != "tok-1" {
					t.Fatalf("self heard %q", p)
				}
				heard["self"] = true
			case p := <-gotOther:
				if p != "tok-1" {
					t.Fatalf("other heard %q", p)
				}
				if e.engine == "sqlite" {
					// SQLite has one process: the fan-out is per store.
					t.Fatal("a second SQLite store heard an in-process notification")
				}
				heard["other"] = true
			case <-time.After(50 * time.Millisecond):
			case <-deadline:
				t.Fatalf("not heard: %v", heard)
			}
			if e.engine == "sqlite" && heard["self"] {
				break
			}
		}
	}},
	{"notify/rejects_bad_channel", func(t *testing.T, e *env) {
		if err := e.s.Notify(ctx, "bad channel;", "x"); err == nil {
			t.Fatal("a channel name with spaces was accepted")
		}
	}},
}

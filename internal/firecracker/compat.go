package firecracker

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// The client talks to every release line from MinVersion on. Calls that
// use something an older firecracker lacks find out the host's version
// first (one GET /version, then cached) and fail with an *UnsupportedError
// before sending anything, instead of the older binary's "unknown field"
// or "invalid request method and/or path". Differences that have a
// faithful equivalent are bridged instead: track_dirty_pages on snapshot
// load goes out as enable_diff_snapshots to firecracker older than v1.13.

// ErrUnsupported matches every *UnsupportedError (errors.Is).
var ErrUnsupported = errors.New("not supported by the host's firecracker")

// UnsupportedError says which feature the host's firecracker lacks and
// which release brought it.
type UnsupportedError struct {
	Feature string  // "pmem devices"
	Need    string  // "1.14"
	Have    Version // what GET /version reported
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("firecracker %s on this host does not support %s: it needs firecracker v%s or newer", e.Have, e.Feature, e.Need)
}

// Is makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// WithVersion tells the client the firecracker version, so it need not
// ask (a caller that launched the binary knows it).
func WithVersion(v Version) Option {
	return func(c *Client) { c.setVersion(v) }
}

func (c *Client) setVersion(v Version) {
	c.verMu.Lock()
	c.ver = &v
	c.verMu.Unlock()
}

// DetectVersion returns the version of the firecracker behind the client,
// asking GET /version the first time.
func (c *Client) DetectVersion(ctx context.Context) (Version, error) {
	c.verMu.Lock()
	v := c.ver
	c.verMu.Unlock()
	if v != nil {
		return *v, nil
	}
	fv, err := c.Version(ctx) // caches it
	if err != nil {
		return Version{}, fmt.Errorf("firecracker version: %w", err)
	}
	parsed, ok := ParseVersion(fv.FirecrackerVersion)
	if !ok {
		return Version{}, fmt.Errorf("firecracker version: unreadable %q", fv.FirecrackerVersion)
	}
	return parsed, nil
}

// Features returns what the firecracker behind the client supports.
func (c *Client) Features(ctx context.Context) (Features, Version, error) {
	v, err := c.DetectVersion(ctx)
	if err != nil {
		return Features{}, Version{}, err
	}
	return FeaturesOf(v), v, nil
}

// need is one feature a call uses.
type need struct {
	feature string
	since   string
	has     func(Features) bool
}

// require checks the needs of a call; with none it asks nothing.
func (c *Client) require(ctx context.Context, needs ...need) error {
	if len(needs) == 0 {
		return nil
	}
	f, v, err := c.Features(ctx)
	if err != nil {
		return err
	}
	for _, n := range needs {
		if !n.has(f) {
			return &UnsupportedError{Feature: n.feature, Need: n.since, Have: v}
		}
	}
	return nil
}

var (
	needPmem          = need{"pmem devices", "1.14", func(f Features) bool { return f.Pmem }}
	needPmemLimiter   = need{"pmem rate limiters", "1.16", func(f Features) bool { return f.PmemRateLimiter }}
	needSerial        = need{"the serial device configuration (PUT /serial)", "1.14", func(f Features) bool { return f.Serial }}
	needSerialLimiter = need{"serial output rate limiting", "1.16", func(f Features) bool { return f.SerialRateLimiter }}
	needMemHotplug    = need{"memory hotplug (/hotplug/memory)", "1.14", func(f Features) bool { return f.MemoryHotplug }}
	needHinting       = need{"balloon free page hinting and reporting", "1.14", func(f Features) bool { return f.BalloonHinting }}
	needUnplug        = need{"device hot-unplug", "1.16", func(f Features) bool { return f.Hotplug }}
	needMTU           = need{"network interface MTU", "1.16", func(f Features) bool { return f.NetMTU }}
	needOverrides     = need{"network overrides on snapshot load", "1.12", func(f Features) bool { return f.NetworkOverrides }}
	needVsockOverride = need{"vsock overrides on snapshot load", "1.16", func(f Features) bool { return f.VsockOverride }}
	needClock         = need{"clock_realtime on snapshot load", "1.16", func(f Features) bool { return f.ClockRealtime }}
	needLoadHuge      = need{"huge_pages on snapshot load", "1.17", func(f Features) bool { return f.SnapshotLoadHugePages }}
	needHugePages     = need{"huge pages", "1.7", func(f Features) bool { return f.HugePages }}
	needTHP           = need{"transparent huge pages", "1.17", func(f Features) bool { return f.TransparentHugePages }}
	needVhostUser     = need{"vhost-user block devices", "1.6", func(f Features) bool { return f.VhostUserBlock }}
	needImdsCompat    = need{"mmds imds_compat", "1.13", func(f Features) bool { return f.ImdsCompat }}
	needEmitID        = need{"metrics emit_id and properties", "1.17", func(f Features) bool { return f.MetricsEmitID }}
)

func hugePageNeeds(hp string) []need {
	switch hp {
	case "", "None":
		return nil
	case "Transparent":
		return []need{needTHP}
	}
	return []need{needHugePages}
}

// loadSnapshotBody is what goes out for a snapshot load: on firecracker
// older than v1.13 track_dirty_pages is spelled enable_diff_snapshots.
func (c *Client) loadSnapshotBody(ctx context.Context, p SnapshotLoadParams) (SnapshotLoadParams, error) {
	var needs []need
	if len(p.NetworkOverrides) > 0 {
		needs = append(needs, needOverrides)
	}
	if p.VsockOverride != nil {
		needs = append(needs, needVsockOverride)
	}
	if p.ClockRealtime != nil && *p.ClockRealtime {
		needs = append(needs, needClock)
	}
	if p.HugePages != "" {
		needs = append(needs, needLoadHuge)
	}
	if err := c.require(ctx, needs...); err != nil {
		return p, err
	}
	if p.TrackDirtyPages != nil && *p.TrackDirtyPages && p.EnableDiffSnapshots == nil {
		f, _, err := c.Features(ctx)
		if err != nil {
			return p, err
		}
		if !f.LoadTrackDirtyPages {
			p.EnableDiffSnapshots, p.TrackDirtyPages = p.TrackDirtyPages, nil
		}
	}
	return p, nil
}

// microHTTPError reads micro_http's own error body, `{ "error": "…" }`,
// whose message is not JSON-escaped (it carries a raw line feed).
func microHTTPError(raw []byte) (string, bool) {
	s := strings.TrimSpace(string(raw))
	msg, ok := strings.CutPrefix(s, `{ "error": "`)
	if !ok {
		return "", false
	}
	msg, ok = strings.CutSuffix(msg, `" }`)
	return msg, ok
}

package api

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/nexus-microvm/nexus/internal/apierr"
)

// A rate class is what a call costs from: every token has a bucket per
// class, and every source address one for failed authentication.
type rateClass string

const (
	classRead     rateClass = "read"     // GET
	classMutation rateClass = "mutation" // POST, PUT, PATCH, DELETE that create nothing
	classCreate   rateClass = "create"   // calls that make a resource (VMs, images, templates, snapshots, tokens)
	classAuthFail rateClass = "auth_failure"
)

var rateClasses = []rateClass{classRead, classMutation, classCreate, classAuthFail}

// Rate is one token bucket: PerSecond calls a second on average, Burst at
// once. A zero Rate does not limit.
type Rate struct {
	PerSecond float64
	Burst     int
}

// On reports whether r limits anything.
func (r Rate) On() bool { return r.PerSecond > 0 }

func (r Rate) String() string {
	if !r.On() {
		return "0"
	}
	return strconv.FormatFloat(r.PerSecond, 'f', -1, 64) + ":" + strconv.Itoa(r.Burst)
}

// ParseRate reads "RATE[:BURST]" (calls per second, bucket size; the burst
// defaults to twice the rate, at least 1); "0" or "" is no limit.
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return Rate{}, nil
	}
	rs, bs, hasBurst := strings.Cut(s, ":")
	per, err := strconv.ParseFloat(rs, 64)
	if err != nil || per < 0 || math.IsInf(per, 0) || math.IsNaN(per) {
		return Rate{}, fmt.Errorf("rate %q: want calls per second, optionally :burst (e.g. 20:40)", s)
	}
	r := Rate{PerSecond: per, Burst: max(1, int(math.Ceil(2*per)))}
	if hasBurst {
		b, err := strconv.Atoi(bs)
		if err != nil || b < 1 {
			return Rate{}, fmt.Errorf("rate %q: the burst must be a positive integer", s)
		}
		r.Burst = b
	}
	if per == 0 {
		return Rate{}, nil
	}
	return r, nil
}

// RateLimits are the API's rate limits (Deps.RateLimits); the zero value
// limits nothing.
type RateLimits struct {
	Read, Mutation, Create Rate // per token
	AuthFailure            Rate // per source address: calls without a valid token
	// Now is the limiters' clock (nil: time.Now); tests pass their own.
	Now func() time.Time
}

// DefaultRateLimits are prod mode's limits.
var DefaultRateLimits = RateLimits{
	Read:        Rate{PerSecond: 50, Burst: 200},
	Mutation:    Rate{PerSecond: 20, Burst: 100},
	Create:      Rate{PerSecond: 5, Burst: 50},
	AuthFailure: Rate{PerSecond: 1, Burst: 20},
}

func (l RateLimits) of(c rateClass) Rate {
	switch c {
	case classRead:
		return l.Read
	case classMutation:
		return l.Mutation
	case classCreate:
		return l.Create
	}
	return l.AuthFailure
}

// maxRateKeys bounds the buckets kept per class: keys past it share one
// bucket, so a caller with many addresses cannot grow the map without limit.
const maxRateKeys = 1 << 16

// rateLimiter keeps a bucket per (class, key); a key is a token id, or a
// source address for failed authentication.
type rateLimiter struct {
	cfg RateLimits
	now func() time.Time

	mu      sync.Mutex
	buckets map[rateClass]map[string]*rate.Limiter
	// overflow is each class's shared bucket for keys past maxRateKeys.
	overflow map[rateClass]*rate.Limiter
	lastTidy time.Time

	limited *prometheus.CounterVec
}

func newRateLimiter(reg prometheus.Registerer, cfg RateLimits) *rateLimiter {
	l := &rateLimiter{
		cfg: cfg, now: cfg.Now, buckets: map[rateClass]map[string]*rate.Limiter{}, overflow: map[rateClass]*rate.Limiter{},
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nexus_api_rate_limited_total", Help: "Calls refused with 429 by a rate limit, by class (read, mutation, create, auth_failure).",
		}, []string{"class"}),
	}
	if l.now == nil {
		l.now = time.Now
	}
	limits := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nexus_api_rate_limit", Help: "The rate limits by class: calls per second (kind=rate) and bucket size (kind=burst); 0 is no limit.",
	}, []string{"class", "kind"})
	for _, c := range rateClasses {
		r := cfg.of(c)
		l.buckets[c] = map[string]*rate.Limiter{}
		l.overflow[c] = rate.NewLimiter(rate.Limit(r.PerSecond), r.Burst)
		limits.WithLabelValues(string(c), "rate").Set(r.PerSecond)
		limits.WithLabelValues(string(c), "burst").Set(float64(r.Burst))
		l.limited.WithLabelValues(string(c))
	}
	if reg != nil {
		reg.MustRegister(l.limited, limits)
	}
	return l
}

// bucket returns key's bucket of class c, made on first use.
func (l *rateLimiter) bucket(c rateClass, key string, now time.Time) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.buckets[c]
	if b, ok := m[key]; ok {
		return b
	}
	if len(m) >= maxRateKeys && now.Sub(l.lastTidy) > time.Second {
		l.tidy(now)
	}
	if len(m) >= maxRateKeys {
		return l.overflow[c]
	}
	r := l.cfg.of(c)
	b := rate.NewLimiter(rate.Limit(r.PerSecond), r.Burst)
	m[key] = b
	return b
}

// tidy forgets the buckets that are full again: they hold no state a new
// bucket would not have.
func (l *rateLimiter) tidy(now time.Time) {
	l.lastTidy = now
	for _, m := range l.buckets {
		for k, b := range m {
			if b.TokensAt(now) >= float64(b.Burst()) {
				delete(m, k)
			}
		}
	}
}

// take spends one call of key's class-c bucket, or answers 429 with the
// seconds until the bucket has one again.
func (l *rateLimiter) take(c rateClass, key, who string) error {
	r := l.cfg.of(c)
	if !r.On() {
		return nil
	}
	now := l.now()
	res := l.bucket(c, key, now).ReserveN(now, 1)
	delay := res.DelayFrom(now)
	if delay == 0 {
		return nil
	}
	res.CancelAt(now) // a refused call spends nothing
	return l.refuse(c, r, who, delay)
}

// blocked answers 429 when key's class-c bucket is empty, without spending
// from it: a source whose failed authentications used up its bucket is
// refused before its token is hashed.
func (l *rateLimiter) blocked(c rateClass, key, who string) error {
	r := l.cfg.of(c)
	if !r.On() {
		return nil
	}
	now := l.now()
	b := l.bucket(c, key, now)
	if t := b.TokensAt(now); t < 1 {
		return l.refuse(c, r, who, time.Duration((1-t)/r.PerSecond*float64(time.Second)))
	}
	return nil
}

// spend takes one call from key's class-c bucket, going into debt if it
// must (a failed authentication that already happened).
func (l *rateLimiter) spend(c rateClass, key string) {
	if !l.cfg.of(c).On() {
		return
	}
	now := l.now()
	l.bucket(c, key, now).ReserveN(now, 1)
}

func (l *rateLimiter) refuse(c rateClass, r Rate, who string, delay time.Duration) error {
	l.limited.WithLabelValues(string(c)).Inc()
	secs := max(1, int(math.Ceil(delay.Seconds())))
	var e *apierr.Error
	if c == classAuthFail {
		e = apierr.Newf(http.StatusTooManyRequests, "rate_limited", "too many calls without a valid token from %s (%s a second, bursts of %d)", who, fmtRate(r.PerSecond), r.Burst).
			WithSuggestion("send a valid token; retry after " + strconv.Itoa(secs) + " s")
	} else {
		e = apierr.Newf(http.StatusTooManyRequests, "rate_limited", "this token's %s calls are over their limit (%s a second, bursts of %d)", c, fmtRate(r.PerSecond), r.Burst).
			WithSuggestion("slow down; retry after " + strconv.Itoa(secs) + " s")
	}
	return huma.ErrorWithHeaders(e, http.Header{"Retry-After": {strconv.Itoa(secs)}})
}

func fmtRate(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// classOf is the rate class of an operation.
func classOf(op *huma.Operation, pol policy) rateClass {
	switch {
	case op.Method == http.MethodGet || op.Method == http.MethodHead:
		return classRead
	case pol.Creates:
		return classCreate
	}
	return classMutation
}

// sourceKey is the bucket key of a source address: the address, or its /64
// for IPv6, where one caller commonly holds the whole prefix.
func sourceKey(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Is4() || ip.Is4In6() {
		return addr
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return addr
	}
	return p.String()
}

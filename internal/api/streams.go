package api

import (
	"net/http"
	"sync"

	"github.com/danielgtaylor/huma/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/apierr"
)

// Default stream caps (Deps.MaxStreams, Deps.MaxStreamsPerToken). A
// relayed stream holds two descriptors (the caller's connection and the
// agent's) and a goroutine for as long as the caller stays; the per-token
// cap keeps one caller from taking every slot.
const (
	DefaultMaxStreams         = 256
	DefaultMaxStreamsPerToken = 32
)

// streamRetryAfter is the Retry-After of a refused stream, in seconds.
const streamRetryAfter = "5"

// streamLimiter counts the log streams a manager relays, in all and per
// token.
type streamLimiter struct {
	max, perToken int

	mu        sync.Mutex
	total     int
	byToken   map[string]int
	byProject map[string]int

	open    prometheus.Gauge
	refused *prometheus.CounterVec
}

func newStreamLimiter(reg prometheus.Registerer, max, perToken int) *streamLimiter {
	if max <= 0 {
		max = DefaultMaxStreams
	}
	if perToken <= 0 {
		perToken = DefaultMaxStreamsPerToken
	}
	l := &streamLimiter{
		max: max, perToken: perToken, byToken: map[string]int{}, byProject: map[string]int{},
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nexus_api_streams", Help: "Log streams this manager relays now.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nexus_api_streams_refused_total", Help: "Log streams refused with 429, by the cap that was full (global, token, project quota).",
		}, []string{"cap"}),
	}
	l.refused.WithLabelValues("global")
	l.refused.WithLabelValues("token")
	l.refused.WithLabelValues("project")
	if reg != nil {
		limit := prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "nexus_api_streams_limit", Help: "The caps on relayed log streams (global, token).",
		}, []string{"cap"})
		limit.WithLabelValues("global").Set(float64(max))
		limit.WithLabelValues("token").Set(float64(perToken))
		reg.MustRegister(l.open, l.refused, limit)
	}
	return l
}

// acquire takes a slot for token's stream of a VM of project, or answers
// 429 too_many_streams; projectLimit is the project's quota of streams
// (nil: none). release gives the slot back.
func (l *streamLimiter) acquire(token, project string, projectLimit *int64) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var e *apierr.Error
	switch {
	case l.total >= l.max:
		l.refused.WithLabelValues("global").Inc()
		e = apierr.Newf(http.StatusTooManyRequests, "too_many_streams", "this manager already relays %d log streams, its limit", l.max).
			WithSuggestion("retry later, or follow the VM through another manager")
	case l.byToken[token] >= l.perToken:
		l.refused.WithLabelValues("token").Inc()
		e = apierr.Newf(http.StatusTooManyRequests, "too_many_streams", "this token already has %d log streams open, its limit", l.perToken).
			WithSuggestion("close streams you no longer read")
	case projectLimit != nil && int64(l.byProject[project]) >= *projectLimit:
		l.refused.WithLabelValues("project").Inc()
		e = apierr.Newf(http.StatusTooManyRequests, "too_many_streams", "project %s already has %d log streams open on this manager, its quota", project, *projectLimit).
			WithSuggestion("close streams you no longer read, or ask an admin to raise the project's streams quota")
	}
	if e != nil {
		return nil, huma.ErrorWithHeaders(e, http.Header{"Retry-After": {streamRetryAfter}})
	}
	l.total++
	l.byToken[token]++
	l.byProject[project]++
	l.open.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.byToken[token]--; l.byToken[token] <= 0 {
				delete(l.byToken, token) // the maps hold only keys with open streams
			}
			if l.byProject[project]--; l.byProject[project] <= 0 {
				delete(l.byProject, project)
			}
			l.open.Dec()
		})
	}, nil
}

// ofProject is how many streams of project's VMs are open.
func (l *streamLimiter) ofProject(project string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byProject[project]
}

package apitypes

import "time"

// Whoami is GET /v1/whoami: who the caller's token is, so that a client
// (the web console) shows only what the token may do.
type Whoami struct {
	TokenID string `json:"token_id"`
	Owner   string `json:"owner"`
	Role    string `json:"role" enum:"viewer,operator,admin"`
	Project string `json:"project" doc:"the token's project; \"*\" for all"`
}

// Sample is one of a VM's metric values, named as the agent's /metrics
// names the series (docs/runbook.md lists them).
type Sample struct {
	Name  string  `json:"name"`
	Type  string  `json:"type" enum:"counter,gauge"`
	Value float64 `json:"value"`
}

// VMStats is GET /v1/vms/{id}/stats: the VM's current values of the
// series its agent exports, counters monotonic (rates are the client's).
type VMStats struct {
	ID      string    `json:"id"`
	At      time.Time `json:"at" doc:"when the agent read them"`
	Samples []Sample  `json:"samples"`
}

// SDTargetGroup is one entry of GET /v1/discovery/prometheus, in the
// format of Prometheus's HTTP service discovery.
type SDTargetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

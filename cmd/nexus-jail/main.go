// Command nexus-jail is the agent's jail helper: started by the agent in
// new mount and PID namespaces, it confines one VMM (cgroups, chroot,
// uid/gid, no capabilities, no_new_privs) and execs it. It is small so
// that it adds little to a VMM's start; the nexus binary does the same
// when started under this name. See package internal/agent/jail.
package main

import "github.com/nexus-microvm/nexus/internal/agent/jail"

func main() { jail.HelperMain() }

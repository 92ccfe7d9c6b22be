package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/freeport"
)

// Cluster is a real Redis Cluster of redis-server child processes: three
// masters with one replica each, joined by redis-cli --cluster create.
type Cluster struct {
	Servers []*Server // every process, masters and replicas, in port order
	t       testing.TB
}

// clusterNodeTimeout is cluster-node-timeout: how long a master must be
// unreachable before its replica is promoted. Redis' default (15 s) would
// make every failover test wait that long; much shorter risks failovers
// that nobody caused on a loaded 2-core machine.
const clusterNodeTimeout = 3000

// StartCluster starts six redis-server processes with cluster mode on free
// loopback ports, joins them as three masters and three replicas, waits
// until every node reports cluster_state:ok with all slots served, and
// stops them all when the test ends. A missing redis-server or redis-cli
// fails the test: both are required dependencies (scripts/test.sh installs
// them).
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found (install the redis-server and redis-tools packages): %v", bin, err)
		}
	}
	c := &Cluster{t: t}
	ports := clusterPorts(t, 6)
	for _, p := range ports {
		s := &Server{dir: t.TempDir(), t: t, Port: p, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p)),
			extra: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeout),
				"--repl-diskless-sync-delay", "0"}}
		s.start()
		t.Cleanup(s.Kill)
		c.Servers = append(c.Servers, s)
	}
	args := []string{"--cluster", "create"}
	for _, s := range c.Servers {
		args = append(args, s.Addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitOK()
	return c
}

// clusterPorts claims n ports p, each with its cluster bus port p+10000,
// all below the ephemeral range (see freeport).
func clusterPorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freeport.Pair(t, 10000)
	}
	return ports
}

// URL is the redis+cluster:// URL naming every node as a seed.
func (c *Cluster) URL() string {
	addrs := make([]string, 0, len(c.Servers))
	for _, s := range c.Servers {
		if s.cmd != nil {
			addrs = append(addrs, s.Addr)
		}
	}
	return "redis+cluster://" + strings.Join(addrs, ",")
}

// WaitOK waits until every running node reports cluster_state:ok with all
// 16384 slots served and agrees on who serves them, and every replica is in
// sync with its master. It is the condition
// itself: it waits as long as the cluster needs, up to a bound for a broken
// one.
func (c *Cluster) WaitOK() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if last = c.notOK(); last == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("cluster not ok within 60s: %s", last)
}

// notOK says why the cluster is not ok yet, or "".
func (c *Cluster) notOK() string {
	var view string
	for _, s := range c.Servers {
		if s.cmd == nil {
			continue
		}
		info, err := s.Exec("cluster", "info")
		if err != nil {
			return err.Error()
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			return s.Addr + ": " + strings.Join(strings.Fields(info)[:3], " ")
		}
		// A replica that has not finished its first sync cannot take
		// over: a kill before it would leave the slots unserved.
		repl, err := s.Exec("info", "replication")
		if err != nil {
			return err.Error()
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return s.Addr + ": replica not in sync"
		}
		m, err := s.slotMasters()
		if err != nil {
			return err.Error()
		}
		if view == "" {
			view = m
		} else if m != view {
			return "nodes disagree on the slot map"
		}
	}
	return ""
}

// slotMasters is the server's view of which master serves which slots, as
// comparable text.
func (s *Server) slotMasters() (string, error) {
	out, err := s.Exec("cluster", "nodes")
	if err != nil {
		return "", err
	}
	var masters []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		masters = append(masters, addr+" "+strings.Join(f[8:], " "))
	}
	slices.Sort(masters)
	return strings.Join(masters, "; "), nil
}

// Server returns the running process listening on addr, or nil.
func (c *Cluster) Server(addr string) *Server {
	for _, s := range c.Servers {
		if s.Addr == addr && s.cmd != nil {
			return s
		}
	}
	return nil
}

// any is a running node to ask.
func (c *Cluster) any() *Server {
	for _, s := range c.Servers {
		if s.cmd != nil {
			return s
		}
	}
	c.t.Fatal("no cluster node is running")
	return nil
}

// Slot is CLUSTER KEYSLOT of key, as Redis computes it.
func (c *Cluster) Slot(key string) int {
	c.t.Helper()
	out, err := c.any().Exec("cluster", "keyslot", key)
	if err != nil {
		c.t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		c.t.Fatalf("cluster keyslot %q: %q", key, out)
	}
	return n
}

// clusterNode is one line of CLUSTER NODES.
type clusterNode struct {
	id, addr string
	master   bool
	slots    [][2]int
}

func (c *Cluster) nodes() []clusterNode {
	c.t.Helper()
	out, err := c.any().Exec("cluster", "nodes")
	if err != nil {
		c.t.Fatal(err)
	}
	var ns []clusterNode
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || strings.Contains(f[2], "fail") {
			continue
		}
		n := clusterNode{id: f[0], master: strings.Contains(f[2], "master")}
		n.addr, _, _ = strings.Cut(f[1], "@")
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") { // a slot being migrated
				continue
			}
			lo, hi, found := strings.Cut(r, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if found {
				b, _ = strconv.Atoi(hi)
			}
			n.slots = append(n.slots, [2]int{a, b})
		}
		ns = append(ns, n)
	}
	return ns
}

// MasterOf returns the master serving slot.
func (c *Cluster) MasterOf(slot int) *Server {
	c.t.Helper()
	if s := c.masterOf(slot); s != nil {
		return s
	}
	c.t.Fatalf("no running master serves slot %d", slot)
	return nil
}

// masterOf is MasterOf, nil while no running master serves slot.
func (c *Cluster) masterOf(slot int) *Server {
	for _, n := range c.nodes() {
		for _, r := range n.slots {
			if n.master && slot >= r[0] && slot <= r[1] {
				if s := c.Server(n.addr); s != nil {
					return s
				}
			}
		}
	}
	return nil
}

// OtherMaster returns a running master other than m.
func (c *Cluster) OtherMaster(m *Server) *Server {
	c.t.Helper()
	for _, o := range c.Masters() {
		if o != m {
			return o
		}
	}
	c.t.Fatalf("no master other than %s", m.Addr)
	return nil
}

// Masters returns the running masters.
func (c *Cluster) Masters() []*Server {
	c.t.Helper()
	var ms []*Server
	for _, n := range c.nodes() {
		if n.master && len(n.slots) > 0 {
			if s := c.Server(n.addr); s != nil {
				ms = append(ms, s)
			}
		}
	}
	return ms
}

// NodeID returns the cluster node id of s.
func (c *Cluster) NodeID(s *Server) string {
	c.t.Helper()
	out, err := s.Exec("cluster", "myid")
	if err != nil {
		c.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// MoveSlot migrates slot, with its keys, from the master serving it to
// master to, as redis-cli --cluster reshard does: IMPORTING and MIGRATING,
// MIGRATE of every key, then SETSLOT NODE on every master.
func (c *Cluster) MoveSlot(slot int, to *Server) {
	c.t.Helper()
	from := c.MasterOf(slot)
	if from == to {
		c.t.Fatalf("slot %d is already on %s", slot, to.Addr)
	}
	sl := strconv.Itoa(slot)
	must := func(s *Server, args ...string) string {
		c.t.Helper()
		out, err := s.Exec(args...)
		if err != nil || strings.HasPrefix(out, "ERR") {
			c.t.Fatalf("%s %v: %v %s", s.Addr, args, err, out)
		}
		return out
	}
	toID, fromID := c.NodeID(to), c.NodeID(from)
	must(to, "cluster", "setslot", sl, "importing", fromID)
	must(from, "cluster", "setslot", sl, "migrating", toID)
	for {
		out := must(from, "cluster", "getkeysinslot", sl, "100")
		keys := strings.Fields(out)
		if len(keys) == 0 {
			break
		}
		args := append([]string{"migrate", "127.0.0.1", strconv.Itoa(to.Port), "", "0", "5000", "keys"}, keys...)
		must(from, args...)
	}
	for _, m := range c.Masters() {
		must(m, "cluster", "setslot", sl, "node", toID)
	}
	c.waitSlotOn(slot, to)
}

// waitSlotOn waits until every running node says to serves slot.
func (c *Cluster) waitSlotOn(slot int, to *Server) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		agree := true
		for _, s := range c.Servers {
			if s.cmd == nil {
				continue
			}
			out, err := s.Exec("cluster", "nodes")
			if err != nil || !servesSlot(out, to.Addr, slot) {
				agree = false
				break
			}
		}
		if agree {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("slot %d did not settle on %s", slot, to.Addr)
}

func servesSlot(nodes, addr string, slot int) bool {
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.HasPrefix(f[1], addr+"@") {
			continue
		}
		for _, r := range f[8:] {
			lo, hi, found := strings.Cut(r, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				continue
			}
			b := a
			if found {
				b, _ = strconv.Atoi(hi)
			}
			if slot >= a && slot <= b {
				return true
			}
		}
	}
	return false
}

// KillMaster kills (SIGKILL) the master serving slot and waits until a
// replica serves the slot and the cluster is ok again. It returns the
// killed server and the time from the kill to that.
func (c *Cluster) KillMaster(slot int) (*Server, time.Duration) {
	c.t.Helper()
	m := c.MasterOf(slot)
	start := time.Now()
	m.Kill()
	deadline := start.Add(60 * time.Second)
	for c.masterOf(slot) == nil { // until the survivors promote a replica
		if time.Now().After(deadline) {
			out, _ := c.any().Exec("cluster", "nodes")
			c.t.Fatalf("no replica took over slot %d from %s within 60s:\n%s\n%s", slot, m.Addr, out, c.logTails())
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.WaitOK()
	return m, time.Since(start)
}

// logTails is the end of every running node's log, for failure messages.
func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, s := range c.Servers {
		if s.cmd == nil {
			continue
		}
		log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
		lines := strings.Split(strings.TrimSpace(string(log)), "\n")
		fmt.Fprintf(&b, "== %s\n%s\n", s.Addr, strings.Join(lines[max(0, len(lines)-12):], "\n"))
	}
	return b.String()
}

// String names the cluster's nodes, for failure messages.
func (c *Cluster) String() string { return fmt.Sprint(len(c.Servers), " nodes: ", c.URL()) }

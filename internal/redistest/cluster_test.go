package redistest

import (
	"strings"
	"testing"
)

// The helper gives a served 3+3 Cluster whose slots can be moved with
// their keys and whose masters can be killed and replaced.
func TestStartCluster(t *testing.T) {
	c := StartCluster(t)
	if got := len(c.Masters()); got != 3 {
		t.Fatalf("%d masters, want 3", got)
	}
	slot := c.Slot("k{a}")
	if slot != c.Slot("{a}") {
		t.Fatalf("hash tag ignored: %d vs %d", slot, c.Slot("{a}"))
	}
	from := c.MasterOf(slot)
	if out, err := from.Exec("set", "k{a}", "v"); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("set: %v %s", err, out)
	}
	to := c.OtherMaster(from)
	c.MoveSlot(slot, to)
	if got := c.MasterOf(slot); got != to {
		t.Fatalf("slot %d on %s after the move, want %s", slot, got.Addr, to.Addr)
	}
	if out, _ := to.Exec("get", "k{a}"); strings.TrimSpace(out) != "v" {
		t.Fatalf("the key did not move with its slot: %q", out)
	}
	if out, _ := from.Exec("get", "k{a}"); !strings.Contains(out, "MOVED") {
		t.Fatalf("the old master still answers for the slot: %q", out)
	}
	killed, took := c.KillMaster(slot)
	if killed != to {
		t.Fatalf("killed %s, want %s", killed.Addr, to.Addr)
	}
	now := c.MasterOf(slot)
	if out, _ := now.Exec("get", "k{a}"); strings.TrimSpace(out) != "v" {
		t.Fatalf("the promoted replica lost the key: %q", out)
	}
	t.Logf("failover of %s to %s took %v", killed.Addr, now.Addr, took)
	if strings.Contains(c.URL(), killed.Addr) {
		t.Fatalf("URL names the killed node: %s", c.URL())
	}
}

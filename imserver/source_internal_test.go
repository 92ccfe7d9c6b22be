package imserver

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSourceOf(t *testing.T) {
	key := func(s string) sourceKey { return sourceOf(netip.MustParseAddr(s)) }
	for _, tc := range []struct{ a, b string }{
		{"192.0.2.1", "::ffff:192.0.2.1"},                     // mapped IPv4 is IPv4
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ff"}, // one /64
		{"fe80::1%eth0", "fe80::2"},                           // zones do not matter
	} {
		if key(tc.a) != key(tc.b) {
			t.Errorf("%s and %s are different sources", tc.a, tc.b)
		}
	}
	for _, tc := range []struct{ a, b string }{
		{"192.0.2.1", "192.0.2.2"}, // IPv4 is never masked
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
		{"::ffff:192.0.2.1", "::ffff:192.0.3.1"},
		{"0.0.0.1", "::1"},
	} {
		if key(tc.a) == key(tc.b) {
			t.Errorf("%s and %s are one source", tc.a, tc.b)
		}
	}
	if got := key("2001:db8:1:2::1").String(); got != "2001:db8:1:2::/64" {
		t.Errorf("IPv6 source %s", got)
	}
	if got := key("::ffff:192.0.2.1").String(); got != "192.0.2.1" {
		t.Errorf("IPv4 source %s", got)
	}
	if sourceOf(netip.Addr{}) != (sourceKey{}) {
		t.Error("an invalid address must map to the zero key")
	}
}

func TestParseTrustedProxies(t *testing.T) {
	got, err := parseTrustedProxies([]string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "10.1.2.3/16", "::ffff:172.16.0.0/108"})
	if err != nil {
		t.Fatal(err)
	}
	want := "[10.0.0.0/8 192.0.2.7/32 2001:db8::/32 ::1/128 10.1.0.0/16 172.16.0.0/12]"
	if fmtPrefixes(got) != want {
		t.Errorf("parsed %s, want %s", fmtPrefixes(got), want)
	}
	for _, bad := range []string{"nonsense", "10.0.0.0/33", "10.0.0.0/", "fe80::1%eth0", "1.2.3.4:80", ""} {
		if _, err := parseTrustedProxies([]string{bad}); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func fmtPrefixes(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestClientAddr(t *testing.T) {
	trusted, err := parseTrustedProxies([]string{"127.0.0.0/8", "10.0.0.0/8", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, remote string
		xff          []string
		xri, want    string
	}{
		{"plain peer", "198.51.100.1:4000", nil, "", "198.51.100.1"},
		{"untrusted peer's headers are ignored", "198.51.100.1:4000", []string{"203.0.113.9"}, "203.0.113.8", "198.51.100.1"},
		{"trusted peer", "127.0.0.1:4000", []string{"203.0.113.9"}, "", "203.0.113.9"},
		{"spoofed left entries", "127.0.0.1:4000", []string{"6.6.6.6, 203.0.113.9"}, "", "203.0.113.9"},
		{"chain of trusted hops", "127.0.0.1:4000", []string{"6.6.6.6, 203.0.113.9, 10.1.1.1,10.2.2.2"}, "", "203.0.113.9"},
		{"several header lines", "127.0.0.1:4000", []string{"6.6.6.6", "203.0.113.9, 10.1.1.1"}, "", "203.0.113.9"},
		{"entries with ports", "127.0.0.1:4000", []string{"[2001:db8::5]:443, 10.1.1.1:80"}, "", "2001:db8::5"},
		{"bracketed IPv6", "[fd00::1]:4000", []string{"[2001:db8::5]"}, "", "2001:db8::5"},
		{"mapped IPv4", "127.0.0.1:4000", []string{"::ffff:203.0.113.9"}, "", "203.0.113.9"},
		{"empty entries", "127.0.0.1:4000", []string{" , 203.0.113.9 ,, "}, "", "203.0.113.9"},
		{"unknown entry stops at the hop right of it", "127.0.0.1:4000", []string{"203.0.113.9, unknown, 10.1.1.1"}, "", "10.1.1.1"},
		{"all hops trusted", "127.0.0.1:4000", []string{"10.3.3.3, 10.1.1.1"}, "", "10.3.3.3"},
		{"X-Real-IP without X-Forwarded-For", "127.0.0.1:4000", nil, "203.0.113.8", "203.0.113.8"},
		{"X-Forwarded-For wins over X-Real-IP", "127.0.0.1:4000", []string{"203.0.113.9"}, "203.0.113.8", "203.0.113.9"},
		{"bad X-Real-IP", "127.0.0.1:4000", nil, "nonsense", "127.0.0.1"},
		{"IPv6 trusted peer", "[fd00::1]:4000", []string{"2001:db8::5"}, "", "2001:db8::5"},
	} {
		h := http.Header{}
		for _, v := range tc.xff {
			h.Add("X-Forwarded-For", v)
		}
		if tc.xri != "" {
			h.Set("X-Real-IP", tc.xri)
		}
		got, fwd := clientAddr(tc.remote, h, trusted)
		if got.String() != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
		if fwd != (len(tc.xff) > 0 || tc.xri != "") {
			t.Errorf("%s: forwarded %v", tc.name, fwd)
		}
	}
	// Without trusted proxies, every header is ignored.
	h := http.Header{"X-Forwarded-For": {"203.0.113.9"}, "X-Real-Ip": {"203.0.113.8"}}
	if got, _ := clientAddr("127.0.0.1:4000", h, nil); got.String() != "127.0.0.1" {
		t.Errorf("no trusted proxies: %s", got)
	}
	// A header of many trusted hops is read only so far.
	many := strings.Repeat("10.0.0.1, ", 10000) + "10.9.9.9"
	if got, _ := clientAddr("127.0.0.1:4000", http.Header{"X-Forwarded-For": {"203.0.113.9, " + many}}, trusted); !trusted[1].Contains(got) {
		t.Errorf("long chain: %s", got)
	}
}

// FuzzClientAddr: whatever the headers hold, the client address is the
// peer's unless the peer is trusted, and is otherwise one of the addresses
// the headers name (never something made up).
func FuzzClientAddr(f *testing.F) {
	f.Add("127.0.0.1:4000", "203.0.113.9, 10.1.1.1", "", "")
	f.Add("127.0.0.1:4000", "6.6.6.6", "[2001:db8::5]:443,unknown", "203.0.113.8")
	f.Add("198.51.100.1:4000", "203.0.113.9", "", "203.0.113.8")
	f.Add("[fd00::1]:4000", "", "", "2001:db8::5")
	f.Add("garbage", ",,,", "::ffff:1.2.3.4%x", "[::1]")
	trusted, _ := parseTrustedProxies([]string{"127.0.0.0/8", "10.0.0.0/8", "fd00::/8"})
	f.Fuzz(func(t *testing.T, remote, xff1, xff2, xri string) {
		h := http.Header{}
		var entries []string
		for _, v := range []string{xff1, xff2} {
			if v != "" {
				h.Add("X-Forwarded-For", v)
				entries = append(entries, strings.Split(v, ",")...)
			}
		}
		if xri != "" {
			h.Set("X-Real-IP", xri)
		}
		got, _ := clientAddr(remote, h, trusted)
		peer := parseHost(remote)
		if !isTrusted(peer, trusted) {
			if got != peer {
				t.Fatalf("untrusted peer %q: client %s", remote, got)
			}
			return
		}
		if !got.IsValid() || got.Zone() != "" || got.Is4In6() {
			t.Fatalf("client %v is not a plain address", got)
		}
		named := got == peer || got == parseHost(xri)
		for _, e := range entries {
			named = named || got == parseHost(e)
		}
		if !named {
			t.Fatalf("client %s is named nowhere (peer %q, X-Forwarded-For %q %q, X-Real-IP %q)", got, remote, xff1, xff2, xri)
		}
		_ = sourceOf(got).String()
	})
}

// FuzzParseTrustedProxies: what parses is a list of masked prefixes.
func FuzzParseTrustedProxies(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "192.0.2.7", "::ffff:10.0.0.0/104", "2001:db8::1/48", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := parseTrustedProxies([]string{s})
		if err != nil {
			return
		}
		if len(ps) != 1 || !ps[0].IsValid() || ps[0] != ps[0].Masked() || ps[0].Addr().Is4In6() {
			t.Fatalf("%q parsed as %v", s, ps)
		}
	})
}

// testClock is a clock a test moves by hand.
type testClock struct{ now int64 }

func (c *testClock) advance(d time.Duration) { c.now += int64(d) }

func TestSourceLimiterRate(t *testing.T) {
	clk := &testClock{}
	l := newSourceLimiter(5, -1, nil)
	l.clock = func() int64 { return clk.now }
	a := sourceOf(netip.MustParseAddr("192.0.2.1"))
	b := sourceOf(netip.MustParseAddr("192.0.2.2"))
	for i := 0; i < 10; i++ { // a burst of two seconds' worth
		if r, _ := l.admit(a); r != "" {
			t.Fatalf("attempt %d refused: %s", i, r)
		}
	}
	if r, retry := l.admit(a); r != "source_rate" || retry != 200*time.Millisecond {
		t.Fatalf("11th attempt: %q, retry %v; want source_rate after 200ms", r, retry)
	}
	if r, _ := l.admit(b); r != "" {
		t.Fatalf("another source refused: %s", r)
	}
	clk.advance(200 * time.Millisecond)
	if r, _ := l.admit(a); r != "" {
		t.Fatalf("after a refill: %s", r)
	}
	// Failures are not counted when the backoff is off.
	l.failed(a)
	if l.tracked.Load() != 2 {
		t.Fatalf("tracked %d, want 2", l.tracked.Load())
	}
	clk.advance(2 * time.Second) // both buckets full again
	l.sweep()
	if l.tracked.Load() != 0 {
		t.Fatalf("tracked %d after a sweep, want 0", l.tracked.Load())
	}
}

func TestSourceLimiterBackoff(t *testing.T) {
	clk := &testClock{}
	l := newSourceLimiter(-1, 3, nil)
	l.clock = func() int64 { return clk.now }
	a := sourceOf(netip.MustParseAddr("2001:db8::1"))
	admit := func() (string, time.Duration) { return l.admit(a) }
	// Without a rate, a source without failures needs no entry.
	if r, _ := admit(); r != "" || l.tracked.Load() != 0 {
		t.Fatalf("%q, tracked %d", r, l.tracked.Load())
	}
	l.failed(a)
	l.failed(a)
	if r, _ := admit(); r != "" {
		t.Fatalf("after 2 failures of 3: %s", r)
	}
	l.failed(a) // the 3rd: barred for 1 s
	// Each failed probe after a backoff doubles it, up to 30 s; at 31 s
	// time has forgotten one failure, which costs one doubling.
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second} {
		r, retry := admit()
		if r != "token_backoff" || retry != want {
			t.Fatalf("%q, retry %v; want token_backoff for %v", r, retry, want)
		}
		clk.advance(want - time.Nanosecond)
		if r, _ := admit(); r != "token_backoff" {
			t.Fatalf("just before the backoff ends: %q", r)
		}
		clk.advance(time.Nanosecond)
		if r, _ := admit(); r != "" {
			t.Fatalf("after the backoff: %q", r)
		}
		l.failed(a) // the probe fails too
	}
	// Another address of the same /64 is the same source.
	if r, _ := l.admit(sourceOf(netip.MustParseAddr("2001:db8::ffff"))); r != "token_backoff" {
		t.Fatalf("same /64: %q", r)
	}
	if r, _ := l.admit(sourceOf(netip.MustParseAddr("2001:db8:0:1::1"))); r != "" {
		t.Fatalf("another /64: %q", r)
	}

	// A success halves the count.
	b := sourceOf(netip.MustParseAddr("192.0.2.9"))
	l.failed(b)
	l.failed(b)
	l.failed(b) // 3: barred
	clk.advance(time.Second)
	l.succeeded(b) // 1
	l.failed(b)    // 2
	if r, _ := l.admit(b); r != "" {
		t.Fatalf("after a success and a failure: %q", r)
	}
	l.failed(b) // 3: barred for 1 s again, not 2
	if r, retry := l.admit(b); r != "token_backoff" || retry != time.Second {
		t.Fatalf("%q, %v; want token_backoff for 1s", r, retry)
	}
	// Time forgets one failure per 30 s; the entry goes with the last.
	clk.advance(60 * time.Second) // 1 left
	l.failed(b)                   // 2
	if r, _ := l.admit(b); r != "" {
		t.Fatalf("after 60 s: %q", r)
	}
	trackedA := l.tracked.Load() - 1
	clk.advance(29 * time.Second) // 1 left
	l.sweep()
	if l.tracked.Load() < 1+trackedA {
		t.Fatal("swept a source with a failure left")
	}
	clk.advance(29 * time.Second) // still 1
	l.sweep()
	if l.tracked.Load() < 1+trackedA {
		t.Fatal("swept a source with a failure left")
	}
	clk.advance(time.Second)
	l.sweep()
	if l.tracked.Load() != trackedA {
		t.Fatalf("tracked %d, want %d", l.tracked.Load(), trackedA)
	}
	clk.advance(time.Hour)
	l.sweep()
	if l.tracked.Load() != 0 {
		t.Fatalf("tracked %d, want 0", l.tracked.Load())
	}
}

// TestSourceTableFull: once every shard is full, new sources share their
// shard's entry: still limited, together, and counted.
func TestSourceTableFull(t *testing.T) {
	clk := &testClock{}
	untracked := 0
	l := newSourceLimiter(1, 2, func() { untracked++ })
	l.clock = func() int64 { return clk.now }
	next := uint32(0)
	addr := func() sourceKey {
		next++
		return sourceOf(netip.AddrFrom4([4]byte{10, byte(next >> 16), byte(next >> 8), byte(next)}))
	}
	for l.tracked.Load() < sourceShards*sourcesPerShard {
		if next > 4*sourceShards*sourcesPerShard {
			t.Fatalf("table not full after %d sources (%d tracked)", next, l.tracked.Load())
		}
		l.admit(addr())
	}
	if untracked == 0 {
		t.Fatal("no attempt counted as untracked while the shards filled")
	}
	untracked = 0
	clk.advance(2 * time.Second) // the shared buckets refill
	// Two new sources in one shard share its entry.
	first := addr()
	shard := func(k sourceKey) *sourceShard { return l.shard(k) }
	second := addr()
	for shard(second) != shard(first) {
		second = addr()
	}
	if r, _ := l.admit(first); r != "" {
		t.Fatalf("first new source: %q", r)
	}
	if r, _ := l.admit(second); r != "" {
		t.Fatalf("second new source: %q", r)
	}
	if r, _ := l.admit(first); r != "source_rate" {
		t.Fatalf("the shared bucket (burst 2) is spent: %q", r)
	}
	if untracked != 3 {
		t.Fatalf("%d untracked attempts counted, want 3", untracked)
	}
	l.failed(first)
	l.failed(second) // 2: barred for 1 s
	l.failed(first)  // 3: for 2 s
	clk.advance(time.Second)
	if r, _ := l.admit(second); r != "token_backoff" {
		t.Fatalf("the shared entry's failures: %q", r)
	}
	if l.tracked.Load() != sourceShards*sourcesPerShard {
		t.Fatalf("tracked %d", l.tracked.Load())
	}
	clk.advance(time.Hour)
	l.sweep()
	if l.tracked.Load() != 0 {
		t.Fatalf("tracked %d after the sweep", l.tracked.Load())
	}
}

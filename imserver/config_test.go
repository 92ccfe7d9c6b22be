package imserver

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("IM_LISTEN", "127.0.0.1:7001")
	t.Setenv("IM_PING_INTERVAL", "7s")
	t.Setenv("IM_MAX_CONNS", "42")
	t.Setenv("IM_ORIGINS", "a.example, *.b.example")
	t.Setenv("IM_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
	t.Setenv("IM_CONNECT_RATE_PER_SOURCE", "-1")
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg, err := ParseFlags(fs, []string{"-max-conns", "43", "-token-failures-per-source", "5"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7001" || cfg.PingInterval != 7*time.Second || cfg.MaxConns != 43 ||
		strings.Join(cfg.OriginPatterns, "|") != "a.example|*.b.example" ||
		strings.Join(cfg.TrustedProxies, "|") != "10.0.0.0/8|192.0.2.1" || cfg.ConnectRatePerSource != -1 || cfg.TokenFailuresPerSource != 5 {
		t.Errorf("flags and environment not applied (flags win): %+v", cfg)
	}
	t.Setenv("IM_PONG_TIMEOUT", "soon")
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if _, err := ParseFlags(fs, nil); err == nil || !strings.Contains(err.Error(), "IM_PONG_TIMEOUT") {
		t.Errorf("a malformed variable must be an error naming it, got %v", err)
	}
}

func TestConfigDefaultsAndChecks(t *testing.T) {
	var c Config
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":6001" || c.PingInterval != 25*time.Second || c.MaxQueueBytes != 1<<20 || c.Prefix != "im:" ||
		c.ConnectRatePerSource != 20 || c.TokenFailuresPerSource != 10 || len(c.trusted) != 0 {
		t.Errorf("defaults: %+v", c)
	}
	for _, bad := range []Config{
		{Listen: "nope"},
		{PublicURL: "http://x/ws"},
		{NodeID: "has space"},
		{TLSCert: "only-cert.pem"},
		{TrustedProxies: []string{"10.0.0.0/33"}},
	} {
		if err := bad.setDefaults(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

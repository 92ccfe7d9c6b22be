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
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg, err := ParseFlags(fs, []string{"-max-conns", "43"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7001" || cfg.PingInterval != 7*time.Second || cfg.MaxConns != 43 ||
		strings.Join(cfg.OriginPatterns, "|") != "a.example|*.b.example" {
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
	if c.Listen != ":6001" || c.PingInterval != 25*time.Second || c.MaxQueueBytes != 1<<20 || c.Prefix != "im:" {
		t.Errorf("defaults: %+v", c)
	}
	for _, bad := range []Config{
		{Listen: "nope"},
		{PublicURL: "http://x/ws"},
		{NodeID: "has space"},
		{TLSCert: "only-cert.pem"},
	} {
		if err := bad.setDefaults(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

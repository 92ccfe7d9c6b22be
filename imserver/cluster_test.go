package imserver_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
)

// Until the key layout is Cluster-safe (issue 10), a node and imhelper
// given a Redis Cluster refuse it at once with an error that says so,
// whether the URL names it (redis+cluster://) or rueidis finds that a
// plain redis:// seed is one; they never start and fail later with
// CROSSSLOT on a client's connect.
func TestClusterRefusedUntilKeysAreSafe(t *testing.T) {
	c := redistest.StartCluster(t)
	for _, url := range []string{c.URL(), "redis://" + c.Servers[0].Addr} {
		if err := imhelper.ValidateRedisURL(url); err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		_, err := imserver.New(imserver.Config{Listen: "127.0.0.1:0", NodeID: "n1", RedisURL: url}, nil, quietLogger())
		if !errors.Is(err, store.ErrClusterKeys) {
			t.Errorf("node on %s: %v, want ErrClusterKeys", url, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h, err := imhelper.New(ctx, imhelper.Options{RedisURL: url, Logger: quietLogger()})
		cancel()
		if err == nil {
			h.Close()
		}
		if !errors.Is(err, store.ErrClusterKeys) {
			t.Errorf("imhelper on %s: %v, want ErrClusterKeys", url, err)
		}
	}
}

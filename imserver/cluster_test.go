package imserver_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imbroker/imbroker/internal/redistest"
)

// The broker suite on a Redis Cluster: the tests below run again, with
// their own assertions, on one real 3-master, 3-replica Cluster, each
// under a key prefix of its own. startCluster (and startProcCluster) see
// that a test runs here and give it the Cluster instead of a private
// redis-server; the tests themselves do not change.
func TestOnRedisCluster(t *testing.T) {
	rc := redistest.StartCluster(t)
	for _, tc := range []struct {
		name string
		test func(*testing.T)
	}{
		{"ThreeNodes", TestThreeNodes}, // 3 nodes, 300 clients, every imhelper method
		{"ChannelExactlyOnce", TestChannelExactlyOnce},
		{"SendCostsOnePublishPerNode", TestSendCostsOnePublishPerNode},
		{"MultiSocketClient", TestMultiSocketClient}, // one online and one offline event per client
		{"Tokens", TestTokens},
		{"ConsumeEventsSurvivesRestart", TestConsumeEventsSurvivesRestart},
		{"NodeKilled", TestNodeKilled}, // kill -9 a node process: no ghosts
		{"ConnectRacesJoinChan", TestConnectRacesJoinChan},
		{"SendMessagesReceiptsAndEcho", TestSendMessagesReceiptsAndEcho},
		{"SendMessagesResume", TestSendMessagesResume},
		{"ConnectGapDelivered", TestConnectGapDelivered},
		{"JoinGapDelivered", TestJoinGapDelivered},
		{"DeliveryNodeJoins", TestDeliveryNodeJoins},
		{"NodeJoinMovesClients", TestNodeJoinMovesClients},
		{"ForceOfflineEverySocket", TestForceOfflineEverySocket},
		{"ConnectCloseRaces", TestConnectCloseRaces},
		{"DeliveryNodeKilled", TestDeliveryNodeKilled},
		// Last, as they change the Cluster: a slot moved, then a master
		// killed.
		{"SlotMigration", func(t *testing.T) { testClusterSlotMigration(t, rc) }},
		{"Failover", func(t *testing.T) { testClusterFailover(t, rc) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			on := onRedisCluster(t, rc)
			tc.test(t)
			if !on.used.Load() {
				t.Fatal("the test started no broker on the Cluster")
			}
		})
	}
}

var (
	clusterTests  sync.Map // testing.TB → *clusterRun, while it runs
	clusterPrefix atomic.Int64
)

// clusterRun is one test's run on the Cluster.
type clusterRun struct {
	rc   *redistest.Cluster
	used atomic.Bool // startCluster gave the test the Cluster
}

// onRedisCluster makes startCluster give t the Cluster rc.
func onRedisCluster(t *testing.T, rc *redistest.Cluster) *clusterRun {
	on := &clusterRun{rc: rc}
	clusterTests.Store(testing.TB(t), on)
	t.Cleanup(func() { clusterTests.Delete(testing.TB(t)) })
	return on
}

// redisClusterFor returns the URL and a fresh key prefix on the Cluster if
// t runs under onRedisCluster.
func redisClusterFor(t testing.TB) (url, prefix string, ok bool) {
	v, ok := clusterTests.Load(t)
	if !ok {
		return "", "", false
	}
	on := v.(*clusterRun)
	on.used.Store(true)
	return on.rc.URL(), fmt.Sprintf("t%d:", clusterPrefix.Add(1)), true
}

//go:build load

package imserver_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A load run, not part of CI:
//
//	go test -tags load -run TestSlowConsumerLoad -v ./imserver
//
// One node process; 2,000 clients read a broadcast stream while 20 others
// stop reading. It runs the stream twice, without and then with the stalled
// clients, and compares the readers' p99 latency and the node's RSS.
var (
	loadReaders = flag.Int("load.readers", 2000, "clients that read")
	loadStalled = flag.Int("load.stalled", 20, "clients that stop reading")
	loadRate    = flag.Int("load.rate", 20, "broadcasts per second (2,000 readers × 20/s is about half of what this 2-core box delivers)")
	loadSecs    = flag.Int("load.seconds", 10, "seconds per run")
)

func TestSlowConsumerLoad(t *testing.T) {
	c := startProcCluster(t)
	p := c.startProc("load", "-max-queue-bytes", "65536")
	c.waitHelperNodes("load")
	readers := make([]*wsClient, *loadReaders)
	for i := range readers {
		readers[i] = c.connect(fmt.Sprintf("reader-%d", i), "")
	}
	run := func(name string) (p50, p99 time.Duration, rss float64) {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		total := *loadRate * *loadSecs
		for _, w := range readers {
			wg.Add(1)
			go func(w *wsClient) {
				defer wg.Done()
				local := make([]time.Duration, 0, total)
				timeout := time.After(time.Duration(*loadSecs+10) * time.Second)
				for len(local) < total {
					select {
					case f := <-w.frames:
						var d struct {
							T int64 `json:"t"`
						}
						_ = json.Unmarshal(f.Data, &d)
						local = append(local, time.Since(time.Unix(0, d.T)))
					case <-timeout:
						t.Errorf("%s: %s got %d of %d", name, w.id, len(local), total)
						return
					}
				}
				mu.Lock()
				lat = append(lat, local...)
				mu.Unlock()
			}(w)
		}
		tick := time.NewTicker(time.Second / time.Duration(*loadRate))
		var maxRSS float64
		for i := 0; i < total; i++ {
			<-tick.C
			payload := `{"t":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `,"pad":"` + padding + `"}`
			if _, err := c.helper.SendBroadcastMessage(bg, payload); err != nil {
				t.Fatal(err)
			}
			if i%(*loadRate) == 0 {
				maxRSS = max(maxRSS, p.sample(t).rss)
			}
		}
		tick.Stop()
		wg.Wait()
		slices.Sort(lat)
		if len(lat) == 0 {
			t.Fatalf("%s: no samples", name)
		}
		return lat[len(lat)/2], lat[len(lat)*99/100], maxRSS
	}
	base50, base99, baseRSS := run("baseline")
	for i := 0; i < *loadStalled; i++ {
		c.stall(fmt.Sprintf("stalled-%d", i))
	}
	slow50, slow99, slowRSS := run("stalled")
	// The kernel's socket buffers (up to 4 MiB of send buffer here) hide a
	// stalled reader for a while; push past them so the queue bound trips.
	big := `{"pad":"` + strings.Repeat("x", 60<<10) + `"}`
	var stalledIDs []string
	for i := 0; i < *loadStalled; i++ {
		stalledIDs = append(stalledIDs, fmt.Sprintf("stalled-%d", i))
	}
	for i := 0; i < 400 && p.metric(t, "im_slow_consumer_closes_total") < float64(*loadStalled); i++ {
		if _, err := c.helper.SendMessage(bg, "load", stalledIDs, big); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(time.Second)
	slowCloses := p.metric(t, "im_slow_consumer_closes_total")
	t.Logf("| run | readers | stalled | rate | p50 | p99 | node RSS (max) |")
	t.Logf("|---|---|---|---|---|---|---|")
	t.Logf("| baseline | %d | 0 | %d/s | %v | %v | %.1f MiB |", *loadReaders, *loadRate, base50.Round(time.Microsecond), base99.Round(time.Microsecond), baseRSS/(1<<20))
	t.Logf("| stalled | %d | %d | %d/s | %v | %v | %.1f MiB |", *loadReaders, *loadStalled, *loadRate, slow50.Round(time.Microsecond), slow99.Round(time.Microsecond), slowRSS/(1<<20))
	t.Logf("slow-consumer closes: %.0f", slowCloses)
	if slowCloses != float64(*loadStalled) {
		t.Errorf("%v slow-consumer closes, want %d", slowCloses, *loadStalled)
	}
	if slow99 > 2*base99+5*time.Millisecond {
		t.Errorf("p99 with stalled clients %v > 2x baseline %v", slow99, base99)
	}
	// 20 queues of 64 KiB bound the extra memory at about 1.3 MiB, plus
	// kernel socket buffers that do not count in RSS.
	if slowRSS > baseRSS+float64(*loadStalled)*(512<<10)+16<<20 {
		t.Errorf("node RSS grew from %.1f to %.1f MiB", baseRSS/(1<<20), slowRSS/(1<<20))
	}
}

// padding makes each broadcast about 1 KiB.
var padding = func() string {
	b := make([]byte, 1000)
	for i := range b {
		b[i] = 'x'
	}
	return string(b)
}()

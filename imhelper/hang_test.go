package imhelper_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/testnode"
	"github.com/imbroker/imbroker/internal/wire"
)

// hangOp is one imhelper call made while Redis hangs.
type hangOp struct {
	name string
	call func(ctx context.Context, im *imhelper.Client) error
	// untilCtx: a call that runs until ctx ends and then returns ctx.Err()
	// (EventBus, ConsumeEvents), not ErrRedisTimeout.
	untilCtx bool
}

func hangOps(url string) []hangOp {
	ignore := func(context.Context, imhelper.Event) error { return nil }
	return []hangOp{
		// The sequential phase starts with these four.
		{name: "SendMessage", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.SendMessage(ctx, "alice", []string{"bob"}, `{"t":1}`)
			return err
		}},
		{name: "PrevConnectServer", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.PrevConnectServer(ctx, "alice", "")
			return err
		}},
		{name: "JoinChan", call: func(ctx context.Context, im *imhelper.Client) error {
			return im.JoinChan(ctx, "alice", "room")
		}},
		{name: "HasOnline", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.HasOnline(ctx, "alice")
			return err
		}},
		{name: "SendChanMessage", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.SendChanMessage(ctx, "alice", "room", `1`)
			return err
		}},
		{name: "SendBroadcastMessage", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.SendBroadcastMessage(ctx, `1`)
			return err
		}},
		{name: "LeaveChan", call: func(ctx context.Context, im *imhelper.Client) error {
			return im.LeaveChan(ctx, "bob", "room")
		}},
		{name: "JoinChanClients", call: func(ctx context.Context, im *imhelper.Client) error {
			return im.JoinChanClients(ctx, "room", "alice", "bob")
		}},
		{name: "LeaveChanClients", call: func(ctx context.Context, im *imhelper.Client) error {
			return im.LeaveChanClients(ctx, "other", "alice", "bob")
		}},
		{name: "GetChanClientList", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.GetChanClientList(ctx, "room")
			return err
		}},
		{name: "GetChanList", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.GetChanList(ctx)
			return err
		}},
		{name: "GetChanListByClientId", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.GetChanListByClientId(ctx, "alice")
			return err
		}},
		{name: "GetChanOnline", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.GetChanOnline(ctx, "room")
			return err
		}},
		{name: "HasOnlineMany", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.HasOnlineMany(ctx, []string{"alice", "bob"})
			return err
		}},
		{name: "OnlineCount", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.OnlineCount(ctx)
			return err
		}},
		{name: "OnlineClients", call: func(ctx context.Context, im *imhelper.Client) error {
			for _, err := range im.OnlineClients(ctx) {
				if err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "GetClientListByOnline", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.GetClientListByOnline(ctx)
			return err
		}},
		{name: "ForceOffline", call: func(ctx context.Context, im *imhelper.Client) error {
			return im.ForceOffline(ctx, "bob")
		}},
		{name: "NodeInfos", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.NodeInfos(ctx)
			return err
		}},
		{name: "OnlineNode", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.OnlineNode(ctx, "alice")
			return err
		}},
		{name: "ChanMemberCounts", call: func(ctx context.Context, im *imhelper.Client) error {
			_, err := im.ChanMemberCounts(ctx, []string{"room"})
			return err
		}},
		{name: "RefreshNodes", call: func(ctx context.Context, im *imhelper.Client) error {
			return im.RefreshNodes(ctx)
		}},
		{name: "New", call: func(ctx context.Context, _ *imhelper.Client) error {
			im, err := imhelper.New(ctx, imhelper.Options{RedisURL: url, Logger: testnode.Quiet()})
			if err == nil {
				im.Close()
			}
			return err
		}},
		{name: "EventBus", untilCtx: true, call: func(ctx context.Context, im *imhelper.Client) error {
			return im.EventBus(ctx, nil, nil)
		}},
		{name: "ConsumeEvents", untilCtx: true, call: func(ctx context.Context, im *imhelper.Client) error {
			return im.ConsumeEvents(ctx, "g", "c", ignore)
		}},
	}
}

// A Redis that hangs (SIGSTOP: connections are accepted, nothing answers)
// holds no call past its deadline: every call with a 1 s deadline returns
// by then (plus scheduling slack) with an error that is ErrRedisTimeout and
// context.DeadlineExceeded, calls without a deadline return by
// Options.CallTimeout, and Close returns. Before the fix a 1 s call took up
// to 5 s (rueidis waiting for a redial) and one without a deadline 10-15 s.
//
// IM_HANG_CALLS=50 makes the sequential phase 50 calls long, to measure the
// worst case (go test -run TestCallsWhileRedisHangs -v ./imhelper/).
func TestCallsWhileRedisHangs(t *testing.T) {
	const (
		deadline = time.Second
		slack    = 1500 * time.Millisecond // a busy 2-core box
		rounds   = 3                       // of every call at once
	)
	seqCalls := 4
	if s := os.Getenv("IM_HANG_CALLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("IM_HANG_CALLS=%q: %v", s, err)
		}
		seqCalls = n
	}
	ctx := context.Background()
	r := redistest.Start(t)
	t.Cleanup(r.Resume) // runs before Start's Kill

	// One node in the registry, subscribed for (a node nobody listens for
	// is routed around), so that routing reaches Redis.
	rc, err := store.Dial(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	st := store.NewRedis(rc, store.Options{})
	sub, err := st.Subscribe(ctx, "n1", func(store.Message) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Resume(); sub.Close(); rc.Close() })
	_, err = st.WriteLease(ctx,
		wire.NodeInfo{ID: "n1", URL: "ws://n1.invalid/ws", Started: time.Now().UnixMilli()}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	im, err := imhelper.New(ctx, imhelper.Options{RedisURL: r.URL(), Logger: testnode.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	// A second client for the calls without a deadline, closed while
	// Redis still hangs.
	im2, err := imhelper.New(ctx, imhelper.Options{RedisURL: r.URL(), Logger: testnode.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer im2.Close()

	ops := hangOps(r.URL())
	for _, op := range ops { // everything works, and scripts are loaded
		if op.untilCtx {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op.call(cctx, im)
		cancel()
		if err != nil {
			t.Fatalf("%s with Redis up: %v", op.name, err)
		}
	}

	var (
		mu    sync.Mutex
		worst = map[string]time.Duration{}
	)
	// run makes one call with a 1 s deadline and checks how it returned.
	run := func(phase string, op hangOp) {
		cctx, cancel := context.WithTimeout(ctx, deadline)
		defer cancel()
		start := time.Now()
		err := op.call(cctx, im)
		took := time.Since(start)
		mu.Lock()
		worst[phase] = max(worst[phase], took)
		mu.Unlock()
		if took > deadline+slack {
			t.Errorf("%s (%s): returned after %v with a %v deadline: %v", op.name, phase, took.Round(time.Millisecond), deadline, err)
		}
		switch {
		case op.untilCtx && !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("%s (%s): %v, want context.DeadlineExceeded", op.name, phase, err)
		case !op.untilCtx && (!errors.Is(err, imhelper.ErrRedisTimeout) || !errors.Is(err, context.DeadlineExceeded)):
			t.Errorf("%s (%s): %v, want ErrRedisTimeout and context.DeadlineExceeded", op.name, phase, err)
		}
	}

	// The calls that run until ctx ends, on the second client, stop at its
	// Close while Redis hangs.
	untilClose := make(chan error, 2)
	go func() { untilClose <- im2.EventBus(ctx, nil, nil) }()
	go func() {
		untilClose <- im2.ConsumeEvents(ctx, "g2", "c", func(context.Context, imhelper.Event) error { return nil })
	}()
	testnode.WaitFor(t, 10*time.Second, func() error {
		subs, _ := r.Exec("PUBSUB", "NUMSUB", "im:events")
		groups, _ := r.Exec("XINFO", "GROUPS", "im:events:stream")
		if !strings.Contains(subs, "\n1") || !strings.Contains(groups, "g2") {
			return fmt.Errorf("EventBus or ConsumeEvents not started: %q, %q", subs, groups)
		}
		return nil
	})

	r.Pause()
	stopped := time.Now()

	// Without a deadline: the default CallTimeout, on the second client.
	var bg sync.WaitGroup
	for _, op := range ops[:4] {
		bg.Add(1)
		go func() {
			defer bg.Done()
			start := time.Now()
			err := op.call(ctx, im2)
			took := time.Since(start)
			t.Logf("%s without a deadline: %v: %v", op.name, took.Round(time.Millisecond), err)
			if took > imhelper.DefaultCallTimeout+slack {
				t.Errorf("%s without a deadline: returned after %v, CallTimeout is %v", op.name, took, imhelper.DefaultCallTimeout)
			}
			if !errors.Is(err, imhelper.ErrRedisTimeout) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s without a deadline: %v, want ErrRedisTimeout and context.DeadlineExceeded", op.name, err)
			}
		}()
	}
	bgDone := make(chan struct{})
	go func() { bg.Wait(); close(bgDone) }()

	// Every call at once, a few times over; then calls one after the
	// other, which meet rueidis closing the unanswered connection (after
	// about 1 s + store.ConnTimeout) and redialling.
	for range rounds {
		var wg sync.WaitGroup
		for _, op := range ops {
			wg.Add(1)
			go func() {
				defer wg.Done()
				run("concurrent", op)
			}()
		}
		wg.Wait()
	}
	for i := range seqCalls {
		run("sequential", ops[i%len(ops)])
	}
	timer := time.NewTimer(time.Until(stopped.Add(imhelper.DefaultCallTimeout + slack)))
	defer timer.Stop()
	select {
	case <-bgDone:
	case <-timer.C:
		select {
		case <-bgDone:
		default:
			// Before the fix a read without a deadline waited for as long
			// as Redis hung.
			t.Errorf("calls without a deadline still running %v after Redis stopped", time.Since(stopped).Round(time.Millisecond))
			r.Resume()
			<-bgDone
			return
		}
	}

	start := time.Now()
	im2.Close()
	closed := time.Since(start)
	t.Logf("Redis stopped for %v; worst return with a %v deadline: concurrent %v, sequential (%d calls) %v; Close %v",
		time.Since(stopped).Round(time.Millisecond), deadline, worst["concurrent"].Round(time.Millisecond),
		seqCalls, worst["sequential"].Round(time.Millisecond), closed.Round(time.Millisecond))
	if bound := store.DialTimeout + store.ConnTimeout + slack; closed > bound {
		t.Errorf("Close while Redis hangs took %v, want at most %v", closed, bound)
	}
	for range 2 {
		select {
		case err := <-untilClose:
			if !errors.Is(err, imhelper.ErrClosed) {
				t.Errorf("EventBus or ConsumeEvents after Close: %v, want ErrClosed", err)
			}
		case <-time.After(slack):
			t.Errorf("EventBus or ConsumeEvents still running %v after Close", slack)
		}
	}

	// Once Redis answers again, so does the client.
	r.Resume()
	testnode.WaitFor(t, 15*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, deadline)
		defer cancel()
		if err := ops[0].call(cctx, im); err != nil {
			return fmt.Errorf("SendMessage after Redis came back: %w", err)
		}
		return nil
	})
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
)

// The coordinator drives each load process with one JSON request per line on
// its stdin and reads one JSON reply per line from its stdout.

type workerReq struct {
	Op string `json:"op"` // connect, redial, arm, stats, drop, close

	// connect
	RedisURL string   `json:"redis_url,omitempty"`
	Prefix   string   `json:"prefix,omitempty"`
	First    int      `json:"first,omitempty"` // client ids c<First> … c<First+Count-1>
	Count    int      `json:"count,omitempty"`
	Dialers  int      `json:"dialers,omitempty"`
	Local    []string `json:"local,omitempty"`    // source addresses
	Prefetch bool     `json:"prefetch,omitempty"` // fetch every URL before dialling
	Deadline int64    `json:"deadline,omitempty"` // unix ns
	History  string   `json:"history,omitempty"`  // -history mode of imhelper
	Resume   bool     `json:"resume,omitempty"`   // present each client's last position (pos=)
	Retries  int      `json:"retries,omitempty"`  // dial again (a fresh URL) after a failure, as a browser does

	// arm
	Mode   string `json:"mode,omitempty"` // fanout or p2p
	MaxSeq int    `json:"max_seq,omitempty"`
}

const maxSteps = 64

// errURL matches what differs between errors of one kind: URLs, source
// addresses and ports.
var errURL = regexp.MustCompile(`"https?://[^"]*"|127\.\d+\.\d+\.\d+:\d+`)

type workerResp struct {
	Err string `json:"err,omitempty"`

	// connect
	OK          int            `json:"ok,omitempty"`
	Failed      int            `json:"failed,omitempty"`
	Retried     int            `json:"retried,omitempty"` // connected after a retry
	Errors      map[string]int `json:"errors,omitempty"`
	FetchStart  int64          `json:"fetch_start,omitempty"`
	FetchEnd    int64          `json:"fetch_end,omitempty"`
	DialStart   int64          `json:"dial_start,omitempty"`
	DialEnd     int64          `json:"dial_end,omitempty"`
	ConnectHist map[int]uint64 `json:"connect_hist,omitempty"`

	// stats
	Alive     int64             `json:"alive"`
	Steps     []stepStats       `json:"steps,omitempty"`
	Bad       int64             `json:"bad,omitempty"`
	Misrouted int64             `json:"misrouted,omitempty"`
	Other     int64             `json:"other,omitempty"`
	Recovered int64             `json:"recovered,omitempty"` // recovered frames (not messages)
	Unrecov   int64             `json:"unrecov,omitempty"`   // streams reported recovered:false
	Replayed  int64             `json:"replayed,omitempty"`  // benchmark frames before a socket's first recovered frame
	Hists     []map[int]uint64  `json:"hists,omitempty"`
	Extra     map[string]string `json:"extra,omitempty"`
}

type stepStats struct {
	Uniq int64 `json:"uniq"`
	Dups int64 `json:"dups"`
	Last int64 `json:"last"` // unix ns of the step's last receipt
}

type wconn struct {
	idx int
	ws  *websocket.Conn

	live  atomic.Bool            // the socket's first recovered frame arrived
	ended atomic.Bool            // its reader returned: the socket is gone
	pos   atomic.Pointer[string] // the personal stream's position ("E.N") its first frame reported

	mu   sync.Mutex
	bits []uint64 // fanout: sequence numbers received
}

type worker struct {
	mu    sync.Mutex
	conns []*wconn
	alive atomic.Int64
	ctx   context.Context

	helper *imhelper.Client
	// positions of the clients whose sockets drop closed (by client
	// index), presented by a connect with Resume
	posMu     sync.Mutex
	positions map[int]string

	// receive state, replaced by arm
	rs atomic.Pointer[recvState]
}

type recvState struct {
	fanout    bool
	maxSeq    int
	p2pBits   []atomic.Uint64
	uniq      [maxSteps]atomic.Int64
	dups      [maxSteps]atomic.Int64
	last      [maxSteps]atomic.Int64
	hists     [maxSteps]Hist
	bad       atomic.Int64
	misrouted atomic.Int64
	other     atomic.Int64
	recovered atomic.Int64
	unrecov   atomic.Int64
	replayed  atomic.Int64
}

func runWorker() error {
	w := &worker{ctx: context.Background()}
	w.rs.Store(&recvState{})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req workerReq
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			return err
		}
		var resp workerResp
		var err error
		switch req.Op {
		case "connect":
			idx := make([]int, req.Count)
			for i := range idx {
				idx[i] = req.First + i
			}
			resp, err = w.connect(req, idx)
		case "redial":
			resp, err = w.connect(req, w.takeEnded())
		case "arm":
			rs := &recvState{fanout: req.Mode == "fanout", maxSeq: req.MaxSeq}
			if !rs.fanout {
				rs.p2pBits = make([]atomic.Uint64, req.MaxSeq/64+1)
			} else {
				w.mu.Lock()
				for _, c := range w.conns {
					c.mu.Lock()
					c.bits = make([]uint64, req.MaxSeq/64+1)
					c.mu.Unlock()
				}
				w.mu.Unlock()
			}
			w.rs.Store(rs)
		case "stats":
			resp = w.stats()
		case "drop":
			w.drop()
		case "close":
			w.closeAll()
			_ = out.Encode(workerResp{})
			return nil
		default:
			err = fmt.Errorf("unknown op %q", req.Op)
		}
		if err != nil {
			resp.Err = err.Error()
		}
		if err := out.Encode(resp); err != nil {
			return err
		}
	}
	w.closeAll()
	return in.Err()
}

// drop closes every socket (a network drop), keeping each client's last
// position for a connect with Resume.
func (w *worker) drop() {
	w.mu.Lock()
	conns := w.conns
	w.conns = nil
	w.mu.Unlock()
	w.posMu.Lock()
	if w.positions == nil {
		w.positions = make(map[int]string, len(conns))
	}
	for _, c := range conns {
		if p := c.pos.Load(); p != nil {
			w.positions[c.idx] = *p
		}
		_ = c.ws.CloseNow()
	}
	w.posMu.Unlock()
}

// takeEnded removes the sockets that ended (their node died) and returns
// their clients, keeping each one's last position for a connect with
// Resume.
func (w *worker) takeEnded() []int {
	w.mu.Lock()
	var ended []int
	kept := w.conns[:0]
	w.posMu.Lock()
	if w.positions == nil {
		w.positions = map[int]string{}
	}
	for _, c := range w.conns {
		if !c.ended.Load() {
			kept = append(kept, c)
			continue
		}
		ended = append(ended, c.idx)
		if p := c.pos.Load(); p != nil {
			w.positions[c.idx] = *p
		}
	}
	w.posMu.Unlock()
	w.conns = kept
	w.mu.Unlock()
	return ended
}

func (w *worker) closeAll() {
	w.mu.Lock()
	conns := w.conns
	w.conns = nil
	w.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			_ = c.ws.CloseNow()
			<-sem
		}()
	}
	wg.Wait()
	if w.helper != nil {
		w.helper.Close()
	}
}

func (w *worker) stats() workerResp {
	rs := w.rs.Load()
	r := workerResp{Alive: w.alive.Load(), Bad: rs.bad.Load(), Misrouted: rs.misrouted.Load(), Other: rs.other.Load(),
		Recovered: rs.recovered.Load(), Unrecov: rs.unrecov.Load(), Replayed: rs.replayed.Load()}
	n := 0
	for i := maxSteps - 1; i >= 0; i-- {
		if rs.uniq[i].Load() > 0 || rs.dups[i].Load() > 0 {
			n = i + 1
			break
		}
	}
	for i := 0; i < n; i++ {
		r.Steps = append(r.Steps, stepStats{Uniq: rs.uniq[i].Load(), Dups: rs.dups[i].Load(), Last: rs.last[i].Load()})
		r.Hists = append(r.Hists, rs.hists[i].Sparse())
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.Extra = map[string]string{"goroutines": strconv.Itoa(runtime.NumGoroutine()), "heap_inuse": strconv.FormatUint(ms.HeapInuse, 10)}
	return r
}

// connect obtains URLs through imhelper.PrevConnectServer and opens a
// socket for each of clients (c<i>) with req.Dialers concurrent dialers,
// spreading them over the source addresses in req.Local.
func (w *worker) connect(req workerReq, clients []int) (workerResp, error) {
	var resp workerResp
	ctx, cancel := context.WithDeadline(w.ctx, time.Unix(0, req.Deadline))
	defer cancel()
	if w.helper == nil {
		hist, err := historyOptions(req.History)
		if err != nil {
			return resp, err
		}
		h, err := imhelper.New(ctx, imhelper.Options{RedisURL: req.RedisURL, Prefix: req.Prefix, TokenTTL: 10 * time.Minute, History: hist})
		if err != nil {
			return resp, err
		}
		w.helper = h
		for i := 0; i < 100 && len(h.Nodes()) == 0; i++ {
			time.Sleep(50 * time.Millisecond)
			_ = h.RefreshNodes(ctx)
		}
	}
	var next atomic.Uint64
	locals := make([]*net.TCPAddr, 0, len(req.Local))
	for _, l := range req.Local {
		locals = append(locals, &net.TCPAddr{IP: net.ParseIP(l)})
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: 15 * time.Second}
		if len(locals) > 0 {
			d.LocalAddr = locals[next.Add(1)%uint64(len(locals))]
		}
		return d.DialContext(ctx, network, addr)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true, DisableCompression: true}}

	errs := map[string]int{}
	var errMu sync.Mutex
	fail := func(err error) {
		// Without the URL and source address, so that errors of one kind
		// add up.
		msg := errURL.ReplaceAllString(err.Error(), "<url>")
		if len(msg) > 200 {
			msg = msg[:200]
		}
		errMu.Lock()
		errs[msg]++
		errMu.Unlock()
	}
	count := len(clients)
	urls := make([]string, count)
	fetch := func(i int) error {
		u, err := w.helper.PrevConnectServer(ctx, "c"+strconv.Itoa(clients[i]), "")
		if req.Resume && err == nil {
			w.posMu.Lock()
			if p, ok := w.positions[clients[i]]; ok {
				u += "&pos=" + p
			}
			w.posMu.Unlock()
		}
		urls[i] = u
		return err
	}
	if req.Prefetch {
		resp.FetchStart = time.Now().UnixNano()
		var wg sync.WaitGroup
		var idx atomic.Int64
		for g := 0; g < 64; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(idx.Add(1) - 1)
					if i >= count {
						return
					}
					if err := fetch(i); err != nil {
						fail(err)
					}
				}
			}()
		}
		wg.Wait()
		resp.FetchEnd = time.Now().UnixNano()
	}

	var hist Hist
	var ok, failed atomic.Int64
	var lastOK, retried atomic.Int64
	newConns := make([]*wconn, count)
	resp.DialStart = time.Now().UnixNano()
	var wg sync.WaitGroup
	var idx atomic.Int64
	dialers := max(1, min(req.Dialers, count))
	for g := 0; g < dialers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(idx.Add(1) - 1)
				if i >= count || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if !req.Prefetch {
					if err := fetch(i); err != nil {
						fail(err)
						failed.Add(1)
						continue
					}
				}
				if urls[i] == "" {
					failed.Add(1)
					continue
				}
				ws, r, err := websocket.Dial(ctx, urls[i], &websocket.DialOptions{HTTPClient: hc, CompressionMode: websocket.CompressionDisabled})
				for try := 1; err != nil && try <= req.Retries && ctx.Err() == nil; try++ {
					// A browser asks for a fresh URL and dials again: its
					// service's imhelper may still have handed out the
					// dead node's.
					time.Sleep(time.Duration(try) * 50 * time.Millisecond)
					if ferr := fetch(i); ferr != nil {
						continue
					}
					ws, r, err = websocket.Dial(ctx, urls[i], &websocket.DialOptions{HTTPClient: hc, CompressionMode: websocket.CompressionDisabled})
					if err == nil {
						retried.Add(1)
					}
				}
				if err != nil {
					if r != nil {
						body, _ := io.ReadAll(io.LimitReader(r.Body, 200))
						err = fmt.Errorf("HTTP %d %s", r.StatusCode, body)
					}
					fail(err)
					failed.Add(1)
					continue
				}
				now := time.Now()
				hist.Record(int64(now.Sub(t0)))
				lastOK.Store(now.UnixNano())
				c := &wconn{idx: clients[i], ws: ws}
				newConns[i] = c
				w.alive.Add(1)
				go w.read(c)
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	resp.DialEnd = lastOK.Load()
	w.mu.Lock()
	for _, c := range newConns {
		if c != nil {
			w.conns = append(w.conns, c)
		}
	}
	w.mu.Unlock()
	resp.OK, resp.Failed, resp.Retried = int(ok.Load()), int(failed.Load()), int(retried.Load())
	resp.Errors = errs
	resp.ConnectHist = hist.Sparse()
	if ctx.Err() != nil && int(ok.Load()) < count {
		return resp, errors.New("deadline reached while connecting")
	}
	return resp, nil
}

// read receives frames until the socket ends; it records latency, loss and
// duplicates of benchmark messages.
func (w *worker) read(c *wconn) {
	defer w.alive.Add(-1)
	defer c.ended.Store(true)
	c.ws.SetReadLimit(1 << 20)
	buf := make([]byte, 0, 512)
	for {
		_, r, err := c.ws.Reader(w.ctx)
		if err != nil {
			return
		}
		buf = buf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		now := time.Now().UnixNano()
		rs := w.rs.Load()
		if isRecovered(buf) {
			// The "you are live" frame (and later gap reports): neither a
			// message nor a latency sample.
			if !c.live.Swap(true) {
				if p := firstPosition(buf); p != "" {
					c.pos.Store(&p)
				}
			}
			rs.recovered.Add(1)
			rs.unrecov.Add(int64(bytes.Count(buf, recoveredFalse)))
			continue
		}
		m, ok := parseFrame(buf)
		if ok && !c.live.Load() {
			rs.replayed.Add(1)
		}
		if !ok {
			if rs.other.Add(1) == 1 {
				fmt.Fprintf(os.Stderr, "first frame not from the benchmark: %.300s\n", buf)
			}
			continue
		}
		if m.step < 0 || m.step >= maxSteps {
			rs.bad.Add(1)
			continue
		}
		var dup bool
		if rs.fanout {
			c.mu.Lock()
			if c.bits == nil { // a socket opened after arm
				c.bits = make([]uint64, rs.maxSeq/64+1)
			}
			wi := m.seq / 64
			if wi >= len(c.bits) {
				c.mu.Unlock()
				rs.bad.Add(1)
				continue
			}
			mask := uint64(1) << uint(m.seq%64)
			dup = c.bits[wi]&mask != 0
			c.bits[wi] |= mask
			c.mu.Unlock()
		} else {
			if m.to != c.idx {
				rs.misrouted.Add(1)
			}
			wi := m.seq / 64
			if wi >= len(rs.p2pBits) {
				rs.bad.Add(1)
				continue
			}
			mask := uint64(1) << uint(m.seq%64)
			dup = rs.p2pBits[wi].Or(mask)&mask != 0
		}
		if dup {
			rs.dups[m.step].Add(1)
			continue
		}
		rs.uniq[m.step].Add(1)
		rs.hists[m.step].Record(now - m.sent)
		for {
			l := rs.last[m.step].Load()
			if now <= l || rs.last[m.step].CompareAndSwap(l, now) {
				break
			}
		}
	}
}

// firstPosition is the personal stream's position in a recovered frame,
// "" if it lists none.
func firstPosition(f []byte) string {
	var r struct {
		Streams []struct {
			Channel string `json:"channel"`
			Epoch   string `json:"epoch"`
			Offset  uint64 `json:"offset"`
		} `json:"streams"`
	}
	if json.Unmarshal(f, &r) != nil {
		return ""
	}
	for _, s := range r.Streams {
		if s.Channel == "" && s.Epoch != "" {
			return s.Epoch + "." + strconv.FormatUint(s.Offset, 10)
		}
	}
	return ""
}

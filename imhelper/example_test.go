package imhelper_test

import (
	"context"
	"fmt"
	"log"
	"net/http"

	"github.com/imbroker/imbroker/imhelper"
)

// A business service authorises the browser, then pushes to it.
func Example() {
	ctx := context.Background()
	im, err := imhelper.New(ctx, imhelper.Options{RedisURL: "redis://127.0.0.1:6379/0"})
	if err != nil {
		log.Fatal(err)
	}
	defer im.Close()

	// The browser asks for a URL and connects to it.
	http.HandleFunc("POST /im/url", func(w http.ResponseWriter, r *http.Request) {
		userID := "alice" // from your session, never from the request
		url, err := im.PrevConnectServer(r.Context(), userID, `{"device":"web"}`)
		if err != nil {
			http.Error(w, "broker unavailable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, url)
	})

	// A private message with delivery receipts to the sender.
	id, err := im.SendMessage(ctx, "alice", []string{"bob"}, map[string]string{"text": "hi"}, imhelper.WithReceipt())
	if err != nil {
		log.Print(err)
	}
	_ = id

	// A room.
	_ = im.JoinChan(ctx, "bob", "room-1")
	_, _ = im.SendChanMessage(ctx, "alice", "room-1", `{"text":"hello room"}`)
}

// Events that must not be lost are read from the stream with a consumer
// group; each is acknowledged after the handler returns nil.
func ExampleClient_ConsumeEvents() {
	ctx := context.Background()
	im, err := imhelper.New(ctx, imhelper.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer im.Close()
	err = im.ConsumeEvents(ctx, "chat-service", "instance-1", func(ctx context.Context, e imhelper.Event) error {
		log.Printf("%s is %s (%s)", e.Client, e.Type, e.Reason)
		return nil
	})
	log.Print(err)
}

// Iterating over a million online clients without one giant reply.
func ExampleClient_OnlineClients() {
	ctx := context.Background()
	im, err := imhelper.New(ctx, imhelper.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer im.Close()
	for id, err := range im.OnlineClients(ctx) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(id)
	}
}

// Command imserver runs one broker node. Every flag also reads an IM_*
// environment variable; see docs/configuration.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/version"
)

func main() {
	fs := flag.NewFlagSet("imserver", flag.ExitOnError)
	drainTimeout := fs.Duration("drain-timeout", 30*time.Second, "upper bound of the graceful drain on SIGTERM (IM_DRAIN_TIMEOUT)")
	if v := os.Getenv("IM_DRAIN_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "invalid IM_DRAIN_TIMEOUT:", err)
			os.Exit(2)
		}
		*drainTimeout = d
	}
	showVersion := fs.Bool("version", false, "print the build (module version, commit, Go version) and exit")
	cfg, err := imserver.ParseFlags(fs, os.Args[1:])
	if *showVersion {
		fmt.Println("imserver", version.Get())
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	srv, err := imserver.New(cfg, nil, log)
	if errors.Is(err, imserver.ErrInvalidConfig) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err != nil {
		log.Error("failed to start", "err", err)
		os.Exit(1)
	}
	if err := srv.Start(); err != nil {
		log.Error("failed to start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	<-ctx.Done()
	stop()
	dctx, cancel := context.WithTimeout(context.Background(), *drainTimeout)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("drain did not finish in time", "err", err)
	}
}

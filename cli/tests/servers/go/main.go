// An HTTP server for `octopus run`, in the Go standard library only.
//
// It takes its listening socket by the systemd socket-activation convention (fd 3,
// LISTEN_FDS, LISTEN_PID), tells the supervisor it is ready with READY=1 on NOTIFY_SOCKET, and
// on SIGTERM stops accepting, finishes the requests in flight (http.Server.Shutdown) and exits 0.
//
// With -listen ADDR it binds ADDR itself instead and logs "listening on ADDR pid=N" to stderr:
// the same server restarted the naive way (stop it, start it again), which the benchmark
// (octopus-bench run supervisor) compares with `octopus run`.
//
// Routes: GET /ping, GET /pid (its pid), GET /slow?ms=N (answers after N ms).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	address := flag.String("listen", "", "bind this address itself instead of taking fd 3")
	flag.Parse()
	var listener net.Listener
	if *address != "" {
		listener = bind(*address)
	} else {
		listener = activated()
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "pong") })
	mux.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, os.Getpid()) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintln(w, "slow done", os.Getpid())
	})
	server := &http.Server{Handler: mux}

	stopped := make(chan struct{})
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM)
		<-signals
		server.Shutdown(context.Background())
		close(stopped)
	}()

	notify("READY=1")
	if err := server.Serve(listener); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	<-stopped
}

// activated is the listening socket passed as fd 3 by socket activation.
func activated() net.Listener {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") == "" {
		fmt.Fprintln(os.Stderr, "not started by socket activation (LISTEN_PID, LISTEN_FDS)")
		os.Exit(1)
	}
	file := os.NewFile(3, "listener")
	listener, err := net.FileListener(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fd 3 is not a listening socket:", err)
		os.Exit(1)
	}
	file.Close()
	return listener
}

// bind listens on address itself; the line it logs tells whoever started it that it serves.
func bind(address string) net.Listener {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "listening on %s pid=%d\n", listener.Addr(), os.Getpid())
	return listener
}

// notify sends one sd_notify message to the supervisor, if it gave a NOTIFY_SOCKET.
func notify(message string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "notify:", err)
		return
	}
	defer conn.Close()
	conn.Write([]byte(message))
}

// Command server is an ordinary Go net/rpc server using ugorji's MessagePack-RPC codec, the way teams
// already run them: nothing in it knows about the tunnel. Tests put it behind `tunnel-node --forward`.
//
//	server -listen 127.0.0.1:0        # TCP
//	server -listen unix:/tmp/x.sock   # Unix socket
//
// Once listening it prints "listening <address>" on stdout.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/rpc"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/ugorji/go/codec"
)

// Args is the struct argument of Arith's methods.
type Args struct{ X, Y int }

// Arith multiplies and divides.
type Arith struct{}

// Multiply sets reply to X*Y.
func (Arith) Multiply(args *Args, reply *int) error {
	*reply = args.X * args.Y
	return nil
}

// Divide sets reply to X/Y and fails on a zero divisor.
func (Arith) Divide(args *Args, reply *float64) error {
	if args.Y == 0 {
		return errors.New("divide by zero")
	}
	*reply = float64(args.X) / float64(args.Y)
	return nil
}

// Server answers liveness probes and echoes values.
type Server struct{}

// Ping answers "pong".
func (Server) Ping(_ *struct{}, reply *string) error {
	*reply = "pong"
	return nil
}

// Echo returns its argument unchanged.
func (Server) Echo(arg interface{}, reply *interface{}) error {
	*reply = arg
	return nil
}

// Sleep waits ms milliseconds and returns them.
func (Server) Sleep(ms int, reply *int) error {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	*reply = ms
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "host:port, or unix:/path for a Unix socket")
	flag.Parse()

	network, address := "tcp", *listen
	if strings.HasPrefix(address, "unix:") {
		network, address = "unix", strings.TrimPrefix(address, "unix:")
		os.Remove(address)
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		log.Fatal(err)
	}
	if err := rpc.Register(Arith{}); err != nil {
		log.Fatal(err)
	}
	if err := rpc.Register(Server{}); err != nil {
		log.Fatal(err)
	}
	var mh codec.MsgpackHandle
	mh.MapType = reflect.TypeOf(map[string]interface{}(nil))
	mh.RawToString = true
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go rpc.ServeCodec(codec.MsgpackSpecRpc.ServerCodec(conn, &mh))
	}
}

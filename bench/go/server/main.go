// Go net/rpc server with ugorji's MessagePack-RPC codec: the stack our users know, for the benchmark.
// Prints its listening address on the first line of stdout.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/rpc"
	"os"
	"reflect"

	"github.com/ugorji/go/codec"
)

type Args struct{ A, B int }

type Arith int

func (t *Arith) Multiply(args *Args, reply *int) error {
	*reply = args.A * args.B
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	if err := rpc.Register(new(Arith)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	var mh codec.MsgpackHandle
	mh.MapType = reflect.TypeOf(map[string]interface{}(nil))
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go rpc.ServeCodec(codec.MsgpackSpecRpc.ServerCodec(conn, &mh))
	}
}

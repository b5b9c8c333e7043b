// Command client is an ordinary Go net/rpc client using ugorji's MessagePack-RPC codec. Tests point
// it at the relay's MessagePack-RPC port, or straight at the Go server for comparison.
//
//	client -addr 127.0.0.1:9091 call 'Arith.Multiply {"X":2,"Y":3}' '2 Server.Ping null'
//
// Each call is "[connection] Method JSON": calls with the same connection number (default 1) share
// one connection, in order. Arith.Multiply and Arith.Divide take a real Go struct Args{X, Y int};
// other methods take the JSON value. One JSON line per call on stdout: {"result": ...} or
// {"error": "..."}.
//
//	client -addr 127.0.0.1:9091 bench -n 20000 -c 64 'Arith.Multiply {"X":2,"Y":3}'
//
// bench makes n calls, c at a time, over one connection and prints calls per second.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/rpc"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ugorji/go/codec"
)

// Args is the struct argument of Arith's methods.
type Args struct{ X, Y int }

var handle codec.MsgpackHandle

func init() {
	handle.MapType = reflect.TypeOf(map[string]interface{}(nil))
	handle.RawToString = true
}

func dial(addr string) *rpc.Client {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	return rpc.NewClientWithCodec(codec.MsgpackSpecRpc.ClientCodec(conn, &handle))
}

type call struct {
	conn   int
	method string
	arg    interface{}
	reply  interface{}
}

func parseCall(text string) call {
	c := call{conn: 1}
	fields := strings.SplitN(strings.TrimSpace(text), " ", 3)
	if n, err := strconv.Atoi(fields[0]); err == nil {
		c.conn = n
		fields = fields[1:]
	} else if len(fields) == 3 {
		fields = []string{fields[0], fields[1] + " " + fields[2]}
	}
	c.method = fields[0]
	raw := "null"
	if len(fields) > 1 {
		raw = fields[1]
	}
	// The node name prefix (node/Service.Method) does not change the argument types.
	bare := c.method[strings.LastIndex(c.method, "/")+1:]
	switch bare {
	case "Arith.Multiply":
		c.arg, c.reply = new(Args), new(int)
	case "Arith.Divide":
		c.arg, c.reply = new(Args), new(float64)
	default:
		c.arg, c.reply = new(interface{}), new(interface{})
	}
	if err := json.Unmarshal([]byte(raw), c.arg); err != nil {
		log.Fatalf("argument of %q: %v", text, err)
	}
	return c
}

func runCalls(addr string, specs []string) {
	clients := map[int]*rpc.Client{}
	out := json.NewEncoder(os.Stdout)
	for _, spec := range specs {
		c := parseCall(spec)
		client, ok := clients[c.conn]
		if !ok {
			client = dial(addr)
			clients[c.conn] = client
		}
		arg := reflect.ValueOf(c.arg).Elem().Interface()
		if err := client.Call(c.method, arg, c.reply); err != nil {
			out.Encode(map[string]interface{}{"error": err.Error()})
			continue
		}
		out.Encode(map[string]interface{}{"result": reflect.ValueOf(c.reply).Elem().Interface()})
	}
	for _, client := range clients {
		client.Close()
	}
}

func bench(addr string, n, concurrency int, spec string) {
	c := parseCall(spec)
	arg := reflect.ValueOf(c.arg).Elem().Interface()
	client := dial(addr)
	defer client.Close()
	var next, failed int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply := reflect.New(reflect.TypeOf(c.reply).Elem()).Interface()
			for atomic.AddInt64(&next, 1) <= int64(n) {
				if err := client.Call(c.method, arg, reply); err != nil {
					atomic.AddInt64(&failed, 1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"calls": n, "concurrency": concurrency, "seconds": seconds,
		"perSecond": float64(n) / seconds, "failed": failed, "firstError": firstErr.Load(),
	})
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9091", "host:port of the relay's MessagePack-RPC port or of a server")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: client -addr host:port call 'Method JSON'... | bench [-n N] [-c C] 'Method JSON'")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 {
		flag.Usage()
		os.Exit(2)
	}
	switch args[0] {
	case "call":
		runCalls(*addr, args[1:])
	case "bench":
		fs := flag.NewFlagSet("bench", flag.ExitOnError)
		n := fs.Int("n", 20000, "calls to make")
		concurrency := fs.Int("c", 64, "calls in flight at once")
		fs.Parse(args[1:])
		if fs.NArg() != 1 {
			flag.Usage()
			os.Exit(2)
		}
		bench(*addr, *n, *concurrency, fs.Arg(0))
	default:
		flag.Usage()
		os.Exit(2)
	}
}

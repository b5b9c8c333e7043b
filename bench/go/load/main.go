// Go net/rpc load generator: `window` goroutines share one client connection and call
// Arith.Multiply in a loop; prints {calls, rate, p50, p99} as JSON, like bench/load.ts.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/rpc"
	"os"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ugorji/go/codec"
)

type Args struct{ A, B int }

func main() {
	addr := flag.String("addr", "127.0.0.1:9091", "server address")
	window := flag.Int("window", 1, "calls in flight")
	seconds := flag.Float64("seconds", 3, "measured duration")
	warmup := flag.Float64("warmup", 0.5, "unmeasured warm-up")
	method := flag.String("method", "Arith.Multiply", "method to call")
	flag.Parse()
	conn, err := net.Dial("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var mh codec.MsgpackHandle
	mh.MapType = reflect.TypeOf(map[string]interface{}(nil))
	client := rpc.NewClientWithCodec(codec.MsgpackSpecRpc.ClientCodec(conn, &mh))

	var measuring, stop atomic.Bool
	var errors atomic.Int64
	var mu sync.Mutex
	latencies := make([]float64, 0, 1<<20)
	var wg sync.WaitGroup
	for i := 0; i < *window; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var reply int
			for !stop.Load() {
				t0 := time.Now()
				if err := client.Call(*method, Args{A: 2, B: 3}, &reply); err != nil || reply != 6 {
					if errors.Add(1) > 1000 {
						stop.Store(true)
					}
					continue
				}
				if measuring.Load() {
					ms := float64(time.Since(t0).Microseconds()) / 1000
					mu.Lock()
					latencies = append(latencies, ms)
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	measuring.Store(true)
	start := time.Now()
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	measuring.Store(false)
	elapsed := time.Since(start).Seconds()
	mu.Lock()
	calls := len(latencies)
	sort.Float64s(latencies)
	mu.Unlock()
	stop.Store(true)
	wg.Wait()
	pct := func(p float64) float64 {
		if calls == 0 {
			return 0
		}
		i := int(p * float64(calls))
		if i >= calls {
			i = calls - 1
		}
		return latencies[i]
	}
	out, _ := json.Marshal(map[string]interface{}{
		"calls": calls, "errors": errors.Load(), "elapsed": elapsed,
		"rate": float64(calls) / elapsed, "p50": pct(0.5), "p99": pct(0.99),
	})
	fmt.Println(string(out))
}

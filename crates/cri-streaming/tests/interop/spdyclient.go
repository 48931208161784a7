// A client for the interop test, on moby/spdystream (the SPDY library
// kubectl and the kubelet use), speaking like client-go's remotecommand v4
// and portforward clients: upgrade, one stream per streamType (each waits
// for its SYN_REPLY), stdin half-closed after copying, outputs read to EOF.
//
// Usage: spdyclient exec <url> <stdin>   -> prints stdout, stderr, error
//        spdyclient portforward <url> <port> <message>
package main

import (
	"bufio"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

func upgrade(rawURL, protocol string) (*spdystream.Connection, string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		panic(err)
	}
	req, _ := http.NewRequest("POST", rawURL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Add("X-Stream-Protocol-Version", protocol)
	if err := req.Write(conn); err != nil {
		panic(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		panic(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		panic(fmt.Sprintf("upgrade refused: %s", resp.Status))
	}
	if br.Buffered() > 0 {
		panic("server sent frames before the client spoke")
	}
	sc, err := spdystream.NewConnection(conn, false)
	if err != nil {
		panic(err)
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc, resp.Header.Get("X-Stream-Protocol-Version")
}

func open(sc *spdystream.Connection, h http.Header) *spdystream.Stream {
	s, err := sc.CreateStream(h, nil, false)
	if err != nil {
		panic(err)
	}
	if err := s.WaitTimeout(5 * time.Second); err != nil {
		panic(fmt.Sprintf("no reply for %v: %v", h, err))
	}
	return s
}

func execMode(rawURL, stdin string) {
	sc, proto := upgrade(rawURL, "v4.channel.k8s.io")
	errStream := open(sc, http.Header{"Streamtype": {"error"}})
	in := open(sc, http.Header{"Streamtype": {"stdin"}})
	out := open(sc, http.Header{"Streamtype": {"stdout"}})
	errOut := open(sc, http.Header{"Streamtype": {"stderr"}})
	var wg sync.WaitGroup
	var stdout, stderr, status []byte
	wg.Add(3)
	go func() { defer wg.Done(); stdout, _ = ioutil.ReadAll(out) }()
	go func() { defer wg.Done(); stderr, _ = ioutil.ReadAll(errOut) }()
	go func() { defer wg.Done(); status, _ = ioutil.ReadAll(errStream) }()
	// as kubectl's stdin copy: a command may exit without reading its
	// stdin, and the server then closes the streams under the write
	if _, err := io.WriteString(in, stdin); err != nil {
		fmt.Fprintf(os.Stderr, "stdin: %v\n", err)
	}
	in.Close()
	wg.Wait()
	fmt.Printf("protocol=%s\nstdout=%s\nstderr=%s\nerror=%s\n", proto, stdout, stderr, status)
	sc.Close()
}

func portForwardMode(rawURL, port, message string) {
	sc, proto := upgrade(rawURL, "portforward.k8s.io")
	fmt.Printf("protocol=%s\n", proto)
	for i := 0; i < 2; i++ {
		id := fmt.Sprint(i)
		errStream := open(sc, http.Header{"Streamtype": {"error"}, "Port": {port}, "Requestid": {id}})
		data := open(sc, http.Header{"Streamtype": {"data"}, "Port": {port}, "Requestid": {id}})
		msg := fmt.Sprintf("%s %d", message, i)
		if _, err := io.WriteString(data, msg); err != nil {
			panic(err)
		}
		data.Close()
		got, _ := ioutil.ReadAll(data)
		errText, _ := ioutil.ReadAll(errStream)
		fmt.Printf("echo%d=%s\nerror%d=%s\n", i, got, i, errText)
	}
	sc.Close()
}

func main() {
	switch os.Args[1] {
	case "exec":
		execMode(os.Args[2], os.Args[3])
	case "portforward":
		portForwardMode(os.Args[2], os.Args[3], os.Args[4])
	}
}

// Command testbin stands in, inside the test images scripts/critest/images.py
// makes, for the programs critest's upstream images carry and Debian's
// busybox-static lacks. It is one static binary that acts on the name it is
// run as:
//
//   - nginx: what critest checks of nginx (e2e-test-images/nginx,
//     k8s-staging-cri-tools/hostnet-nginx): a process named nginx whose
//     command line reads "nginx: master process ...", its pid in
//     /var/run/nginx.pid, and an HTTP server answering 200 on port 80 (or
//     the port given with -port).
//   - nonewprivs: prints "Effective uid: <euid>"; installed setuid root, as
//     e2e-test-images/nonewprivs, to show whether no_new_privs held.
//   - ipcs: "ipcs -m", the System V shared memory segments of the IPC
//     namespace (from /proc/sysvipc/shm), as util-linux prints them.
//   - pgrep: the pids of the processes whose name matches a pattern.
//   - pause: the sandbox's process, as registry.k8s.io/pause: waits for
//     SIGINT or SIGTERM and reaps the children it inherits as a pod's pid 1
//     (a shell loop would leave a "sleep" in every pod's process list).
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

const nginxTitle = "nginx: master process nginx -g daemon off;"

func main() {
	name := filepath.Base(os.Args[0])
	switch {
	case strings.HasPrefix(name, "nginx"):
		nginx()
	case name == "nonewprivs":
		fmt.Printf("Effective uid: %d\n", os.Geteuid())
	case name == "ipcs":
		ipcs()
	case name == "pgrep":
		pgrep()
	case name == "pause":
		pause()
	default:
		fmt.Fprintf(os.Stderr, "testbin: unknown name %q\n", name)
		os.Exit(2)
	}
}

func nginx() {
	if os.Args[0] != nginxTitle {
		// Run again under nginx's process title; the comm stays "nginx".
		exe, err := os.Executable()
		if err != nil {
			fail("nginx: %v", err)
		}
		args := append([]string{nginxTitle}, os.Args[1:]...)
		fail("nginx: exec %s: %v", exe, syscall.Exec(exe, args, os.Environ()))
	}
	fs := flag.NewFlagSet("nginx", flag.ExitOnError)
	port := fs.Int("port", 80, "port to listen on")
	fs.String("g", "", "ignored (nginx's global directives)")
	_ = fs.Parse(os.Args[1:])
	if err := os.MkdirAll("/var/run", 0o755); err != nil {
		fail("nginx: %v", err)
	}
	pid := strconv.Itoa(os.Getpid()) + "\n"
	if err := os.WriteFile("/var/run/nginx.pid", []byte(pid), 0o644); err != nil {
		fail("nginx: %v", err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(os.Stdout, "%s - - \"%s %s %s\" 200\n", r.RemoteAddr, r.Method, r.URL.Path, r.Proto)
		fmt.Fprint(w, "<html><body><h1>Welcome to nginx!</h1></body></html>\n")
	})
	fail("nginx: %v", http.ListenAndServe(":"+strconv.Itoa(*port), nil))
}

func ipcs() {
	if len(os.Args) != 2 || os.Args[1] != "-m" {
		fail("ipcs: only -m is supported")
	}
	data, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		fail("ipcs: %v", err)
	}
	fmt.Println()
	fmt.Println("------ Shared Memory Segments --------")
	fmt.Printf("%-10s %-10s %-10s %-10s %-10s %-10s %-12s\n", "key", "shmid", "owner", "perms", "bytes", "nattch", "status")
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for _, line := range lines[1:] {
		// key shmid perms size cpid lpid nattch uid gid ...
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		key, _ := strconv.ParseInt(f[0], 10, 64)
		perms, _ := strconv.ParseInt(f[2], 10, 64)
		fmt.Printf("0x%08x %-10s %-10s %-10o %-10s %-10s\n", uint32(key), f[1], f[7], perms&0o777, f[3], f[6])
	}
	fmt.Println()
}

func pgrep() {
	if len(os.Args) != 2 {
		fail("usage: pgrep PATTERN")
	}
	re, err := regexp.Compile(os.Args[1])
	if err != nil {
		fail("pgrep: %v", err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		fail("pgrep: %v", err)
	}
	found := false
	self := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == self {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err == nil && re.MatchString(strings.TrimSpace(string(comm))) {
			fmt.Println(e.Name())
			found = true
		}
	}
	if !found {
		os.Exit(1)
	}
}

func pause() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

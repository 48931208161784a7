// clientcheck drives a containerd-compatible daemon through containerd's
// own Go client library (1.6, as Debian ships it) and checks the behaviours
// Go programs built on it rely on: the ones containerd's integration tests
// (integration/client) hold containerd to. stevedore's e2e suite builds it
// with Debian's golang-go in GOPATH mode (no network) and runs it against
// stevedored with each shim.
//
// Usage: clientcheck -address SOCK -image REF [-run REGEXP]
// Prints one "PASS name" or "FAIL name: reason" line per check; exits 1 when
// any check failed.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/containerd/cgroups/stats/v1"
	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/runtime/v2/runc/options"
	"github.com/containerd/typeurl"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

var (
	address   = flag.String("address", "", "daemon socket")
	imageRef  = flag.String("image", "", "busybox image in a plain-HTTP registry on 127.0.0.1")
	namespace = flag.String("namespace", "clientcheck", "namespace to work in")
	runOnly   = flag.String("run", "", "only checks whose name matches")
)

type env struct {
	client *containerd.Client
	ctx    context.Context
	image  containerd.Image
}

type check struct {
	name string
	fn   func(e *env, id string) error
}

func main() {
	flag.Parse()
	if *address == "" || *imageRef == "" {
		fmt.Fprintln(os.Stderr, "usage: clientcheck -address SOCK -image REF [-run REGEXP]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ctx = namespaces.WithNamespace(ctx, *namespace)
	// New reads the namespace's default-runtime label (Namespaces.Get on a
	// namespace nothing created yet), as every Go client does at start-up
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(*namespace))
	if err != nil {
		fmt.Printf("FAIL connect: %v\n", err)
		os.Exit(1)
	}
	defer client.Close()
	e := &env{client: client, ctx: ctx}
	var only *regexp.Regexp
	if *runOnly != "" {
		only = regexp.MustCompile(*runOnly)
	}
	failed := 0
	for i, c := range checks {
		if only != nil && !only.MatchString(c.name) && c.name != "pull_unpack" {
			continue
		}
		start := time.Now()
		err := c.fn(e, fmt.Sprintf("cc%d-%s", i, strings.ReplaceAll(c.name, "_", "-")))
		if err != nil {
			failed++
			fmt.Printf("FAIL %s: %v\n", c.name, err)
		} else {
			fmt.Printf("PASS %s (%v)\n", c.name, time.Since(start).Round(time.Millisecond))
		}
		if c.name == "pull_unpack" && err != nil {
			break
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

var checks = []check{
	{"namespace_label_creates", namespaceLabelCreates},
	{"pull_unpack", pullUnpack},
	{"output_and_exit_status", outputAndExitStatus},
	{"runc_reason_reaches_client", runcReasonReachesClient},
	{"missing_runtime_binary", missingRuntimeBinary},
	{"invalid_exec_id", invalidExecID},
	{"exec_tty_large_output", execTTYLargeOutput},
	{"close_io_closes_stdin", closeIOClosesStdin},
	{"delete_created_exec_status_0", deleteCreatedExec},
	{"kill_deleted_by_runc_not_found", killDeletedByRunc},
	{"resize_without_terminal", resizeWithoutTerminal},
	{"metrics_complete", metricsComplete},
	{"host_pid_init_exit_kills_all", hostPIDKillsAll},
	{"shim_joins_shim_cgroup", shimJoinsShimCgroup},
}

func namespaceLabelCreates(e *env, id string) error {
	ns := "clientcheck-" + id
	svc := e.client.NamespaceService()
	if err := svc.SetLabel(e.ctx, ns, defaults.DefaultSnapshotterNSLabel, "overlayfs"); err != nil {
		return fmt.Errorf("SetLabel on missing namespace %q: %w", ns, err)
	}
	defer svc.Delete(e.ctx, ns)
	labels, err := svc.Labels(e.ctx, ns)
	if err != nil {
		return err
	}
	if labels[defaults.DefaultSnapshotterNSLabel] != "overlayfs" {
		return fmt.Errorf("labels of %q: %v", ns, labels)
	}
	list, err := svc.List(e.ctx)
	if err != nil {
		return err
	}
	for _, n := range list {
		if n == ns {
			return nil
		}
	}
	return fmt.Errorf("namespace %q not listed: %v", ns, list)
}

func pullUnpack(e *env, _ string) error {
	img, err := e.client.Pull(e.ctx, *imageRef, containerd.WithPullUnpack)
	if err != nil {
		return err
	}
	ok, err := img.IsUnpacked(e.ctx, containerd.DefaultSnapshotter)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("image not unpacked after WithPullUnpack")
	}
	e.image = img
	return nil
}

// newContainer with the image's snapshot and spec options.
func (e *env) newContainer(id string, specOpts []oci.SpecOpts, opts ...containerd.NewContainerOpts) (containerd.Container, error) {
	all := append([]containerd.NewContainerOpts{
		containerd.WithNewSnapshot(id, e.image),
		containerd.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(e.image)}, specOpts...)...),
	}, opts...)
	return e.client.NewContainer(e.ctx, id, all...)
}

func cleanup(e *env, c containerd.Container) {
	if t, err := c.Task(e.ctx, nil); err == nil {
		t.Kill(e.ctx, syscall.SIGKILL)
		t.Delete(e.ctx, containerd.WithProcessKill)
	}
	c.Delete(e.ctx, containerd.WithSnapshotCleanup)
}

func waitExit(ctx context.Context, ch <-chan containerd.ExitStatus) (uint32, error) {
	select {
	case st := <-ch:
		return st.ExitCode(), st.Error()
	case <-time.After(30 * time.Second):
		return 0, errors.New("no exit within 30s")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func outputAndExitStatus(e *env, id string) error {
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("sh", "-c", "echo hello; exit 7")})
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	var out bytes.Buffer
	t, err := c.NewTask(e.ctx, cio.NewCreator(cio.WithStreams(nil, &out, io.Discard)))
	if err != nil {
		return err
	}
	ch, err := t.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := t.Start(e.ctx); err != nil {
		return err
	}
	code, err := waitExit(e.ctx, ch)
	if err != nil {
		return err
	}
	st, err := t.Delete(e.ctx)
	if err != nil {
		return err
	}
	if code != 7 || st.ExitCode() != 7 {
		return fmt.Errorf("exit status %d, delete status %d, want 7", code, st.ExitCode())
	}
	if strings.TrimSpace(out.String()) != "hello" {
		return fmt.Errorf("output %q", out.String())
	}
	return nil
}

func runcReasonReachesClient(e *env, id string) error {
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("/bin/notthere")})
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.NewTask(e.ctx, cio.NewCreator(cio.WithStreams(nil, io.Discard, io.Discard)))
	if err == nil {
		err = t.Start(e.ctx)
	}
	if err == nil {
		return errors.New("a task running /bin/notthere started")
	}
	msg := err.Error()
	if !strings.Contains(msg, `exec: "/bin/notthere"`) || !strings.Contains(msg, "no such file or directory") {
		return fmt.Errorf("runc's reason missing from %q", msg)
	}
	return nil
}

func missingRuntimeBinary(e *env, id string) error {
	c, err := e.newContainer(id, nil, containerd.WithRuntime("io.containerd.runc.v2", &options.Options{BinaryName: "no-runc"}))
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.NewTask(e.ctx, cio.NullIO)
	if err == nil {
		t.Delete(e.ctx, containerd.WithProcessKill)
		return errors.New("task created with BinaryName no-runc")
	}
	if !strings.Contains(err.Error(), `"no-runc"`) || !strings.Contains(err.Error(), "executable file not found") {
		return fmt.Errorf("unexpected error %q", err)
	}
	return nil
}

// runningTask: a container whose init runs sleep.
func (e *env) runningTask(id string, specOpts ...oci.SpecOpts) (containerd.Container, containerd.Task, error) {
	c, err := e.newContainer(id, append([]oci.SpecOpts{oci.WithProcessArgs("sleep", "300")}, specOpts...))
	if err != nil {
		return nil, nil, err
	}
	t, err := c.NewTask(e.ctx, cio.NullIO)
	if err != nil {
		cleanup(e, c)
		return nil, nil, err
	}
	if err := t.Start(e.ctx); err != nil {
		cleanup(e, c)
		return nil, nil, err
	}
	return c, t, nil
}

func invalidExecID(e *env, id string) error {
	c, t, err := e.runningTask(id)
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	spec, err := c.Spec(e.ctx)
	if err != nil {
		return err
	}
	pspec := spec.Process
	pspec.Args = []string{"true"}
	for _, bad := range []string{"../../../../tmp/clientcheck-escape", ".x", "a..b"} {
		_, err := t.Exec(e.ctx, bad, pspec, cio.NullIO)
		if !errdefs.IsInvalidArgument(err) {
			return fmt.Errorf("exec id %q: want InvalidArgument, got %v", bad, err)
		}
	}
	if _, err := os.Stat("/tmp/clientcheck-escape.json"); err == nil {
		return errors.New("/tmp/clientcheck-escape.json was written")
	}
	return nil
}

func execTTYLargeOutput(e *env, id string) error {
	c, t, err := e.runningTask(id)
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	spec, err := c.Spec(e.ctx)
	if err != nil {
		return err
	}
	// one 6.9 MB line through the pty, several times under one exec id
	// (containerd's TestContainerExecLargeOutputWithTTY)
	for i := 0; i < 3; i++ {
		pspec := spec.Process
		pspec.Terminal = true
		pspec.Args = []string{"sh", "-c", `seq -s " " 1000000`}
		var out bytes.Buffer
		p, err := t.Exec(e.ctx, id+"-exec", pspec, cio.NewCreator(cio.WithStreams(nil, &out, nil), cio.WithTerminal))
		if err != nil {
			return err
		}
		ch, err := p.Wait(e.ctx)
		if err != nil {
			return err
		}
		if err := p.Start(e.ctx); err != nil {
			return fmt.Errorf("start (round %d): %w", i, err)
		}
		if code, err := waitExit(e.ctx, ch); err != nil || code != 0 {
			return fmt.Errorf("exec exit %d: %v", code, err)
		}
		if _, err := p.Delete(e.ctx); err != nil {
			return err
		}
		if s := strings.TrimSpace(out.String()); !strings.HasSuffix(s, "999999 1000000") {
			tail := s
			if len(tail) > 20 {
				tail = tail[len(tail)-20:]
			}
			return fmt.Errorf("round %d: output (%d bytes) ends %q", i, len(s), tail)
		}
	}
	return nil
}

func closeIOClosesStdin(e *env, id string) error {
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("cat")})
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	r, w := io.Pipe()
	var out bytes.Buffer
	t, err := c.NewTask(e.ctx, cio.NewCreator(cio.WithStreams(r, &out, io.Discard)))
	if err != nil {
		return err
	}
	ch, err := t.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := t.Start(e.ctx); err != nil {
		return err
	}
	if _, err := w.Write([]byte("hello\n")); err != nil {
		return err
	}
	w.Close()
	if err := t.CloseIO(e.ctx, containerd.WithStdinCloser); err != nil {
		return fmt.Errorf("CloseIO: %w", err)
	}
	code, err := waitExit(e.ctx, ch)
	if err != nil {
		return fmt.Errorf("cat did not see EOF after CloseIO: %w", err)
	}
	t.IO().Wait()
	if code != 0 || out.String() != "hello\n" {
		return fmt.Errorf("exit %d, output %q", code, out.String())
	}
	return nil
}

func deleteCreatedExec(e *env, id string) error {
	c, t, err := e.runningTask(id)
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	spec, err := c.Spec(e.ctx)
	if err != nil {
		return err
	}
	pspec := spec.Process
	pspec.Args = []string{"true"}
	p, err := t.Exec(e.ctx, id+"-exec", pspec, cio.NullIO)
	if err != nil {
		return err
	}
	st, err := p.Delete(e.ctx)
	if err != nil {
		return err
	}
	if st.ExitCode() != 0 {
		return fmt.Errorf("delete of a created exec: exit status %d, want 0", st.ExitCode())
	}
	return nil
}

func killDeletedByRunc(e *env, id string) error {
	// the runc root comes from the runc options, as in containerd's
	// TestKillContainerDeletedByRunc
	root, err := os.MkdirTemp("", "clientcheck-runc-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("sleep", "300")},
		containerd.WithRuntime("io.containerd.runc.v2", &options.Options{Root: root}))
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.NewTask(e.ctx, cio.NullIO)
	if err != nil {
		return err
	}
	if err := t.Start(e.ctx); err != nil {
		return err
	}
	state := filepath.Join(root, *namespace, id, "state.json")
	if _, err := os.Stat(state); err != nil {
		return fmt.Errorf("runc options' Root not used: %w", err)
	}
	out, err := exec.Command("runc", "--root", filepath.Join(root, *namespace), "delete", "-f", id).CombinedOutput()
	if err != nil {
		return fmt.Errorf("runc delete: %v: %s", err, out)
	}
	err = t.Kill(e.ctx, syscall.SIGKILL)
	if !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill after runc delete: want NotFound, got %v", err)
	}
	return nil
}

func resizeWithoutTerminal(e *env, id string) error {
	c, t, err := e.runningTask(id)
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	if err := t.Resize(e.ctx, 80, 24); err != nil {
		return fmt.Errorf("resize of a task without a terminal: %w", err)
	}
	return nil
}

func metricsComplete(e *env, id string) error {
	const limit = 64 << 20
	c, t, err := e.runningTask(id, oci.WithMemoryLimit(limit))
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	m, err := t.Metrics(e.ctx)
	if err != nil {
		return err
	}
	data, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		return fmt.Errorf("decode %s: %w", m.Data.GetTypeUrl(), err)
	}
	s, ok := data.(*v1.Metrics)
	if !ok {
		return fmt.Errorf("metrics are %T (%s), want cgroups v1 Metrics on this host", data, m.Data.GetTypeUrl())
	}
	switch {
	case s.CPU == nil || s.CPU.Usage == nil || s.CPU.Throttling == nil:
		return fmt.Errorf("cpu metrics incomplete: %+v", s.CPU)
	case len(s.CPU.Usage.PerCPU) != runtime.NumCPU():
		return fmt.Errorf("per-CPU usage has %d entries, want %d", len(s.CPU.Usage.PerCPU), runtime.NumCPU())
	case s.Memory == nil || s.Memory.Usage == nil || s.Memory.Swap == nil || s.Memory.Kernel == nil || s.Memory.KernelTCP == nil:
		return fmt.Errorf("memory metrics incomplete: %+v", s.Memory)
	case s.Memory.Usage.Limit != limit:
		return fmt.Errorf("memory limit %d, want %d", s.Memory.Usage.Limit, limit)
	case s.Memory.Usage.Usage == 0 || s.Memory.RSS == 0 && s.Memory.Cache == 0 && s.Memory.MappedFile == 0:
		return fmt.Errorf("memory usage or stat fields empty: %+v", s.Memory)
	case s.Pids == nil || s.Pids.Current == 0:
		return fmt.Errorf("pids metrics: %+v", s.Pids)
	case s.Blkio == nil:
		return errors.New("blkio metrics missing")
	}
	return nil
}

func hostPIDKillsAll(e *env, id string) error {
	dir, err := os.MkdirTemp("", "clientcheck-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	pidFile := filepath.Join(dir, "child.pid")
	c, err := e.newContainer(id, []oci.SpecOpts{
		oci.WithHostNamespace(specs.PIDNamespace),
		oci.WithMounts([]specs.Mount{{Type: "bind", Source: dir, Destination: "/out", Options: []string{"rbind", "rw"}}}),
		oci.WithProcessArgs("sh", "-c", "sleep 300 & echo $! > /out/child.pid; wait"),
	})
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.NewTask(e.ctx, cio.NullIO)
	if err != nil {
		return err
	}
	ch, err := t.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := t.Start(e.ctx); err != nil {
		return err
	}
	var child int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			child = n
			break
		}
	}
	if child == 0 {
		return errors.New("the container's child never reported its pid")
	}
	if err := t.Kill(e.ctx, syscall.SIGKILL); err != nil {
		return err
	}
	if _, err := waitExit(e.ctx, ch); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child)); err != nil || strings.Contains(string(stat), ") Z ") {
			return nil
		}
	}
	syscall.Kill(child, syscall.SIGKILL)
	return fmt.Errorf("child %d of a host-PID container outlived its init", child)
}

func shimJoinsShimCgroup(e *env, id string) error {
	rel := "/" + *namespace + "-" + id
	dir := "/sys/fs/cgroup/memory" + rel
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("create %s (cgroup v1 memory controller): %w", dir, err)
	}
	defer os.Remove(dir)
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("sleep", "300")},
		containerd.WithRuntime("io.containerd.runc.v2", &options.Options{ShimCgroup: rel}))
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.NewTask(e.ctx, cio.NullIO)
	if err != nil {
		return err
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return err
	}
	if len(strings.Fields(string(procs))) == 0 {
		return fmt.Errorf("no process in the shim cgroup %s", rel)
	}
	// the shim (not the container: it has its own cgroup) is in there
	for _, p := range strings.Fields(string(procs)) {
		if p == strconv.Itoa(int(t.Pid())) {
			return fmt.Errorf("the container's init %s is in the shim cgroup", p)
		}
	}
	// leave the cgroup empty so it can be removed
	t.Kill(e.ctx, syscall.SIGKILL)
	t.Delete(e.ctx, containerd.WithProcessKill)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")); len(strings.Fields(string(procs))) == 0 {
			return nil
		}
	}
	return fmt.Errorf("shim still in %s after its task was deleted", rel)
}

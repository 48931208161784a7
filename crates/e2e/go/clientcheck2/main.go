// clientcheck2 drives a containerd-compatible daemon through containerd 2.x's
// own Go client library (github.com/containerd/containerd/v2/client, Debian
// unstable's golang-github-containerd-containerd-dev 2.1) and checks what Go
// programs built on it (Docker 28, nerdctl, BuildKit) rely on: clientcheck's
// checks ported to the 2.x client, plus the 2.x calls (Server, RuntimeInfo,
// snapshotter capabilities, Transfer, sandbox store). stevedore's e2e suite
// builds it offline (scripts/go2-client.sh, GOPATH mode) and runs it against
// stevedored.
//
// Usage: clientcheck2 -address SOCK -image REF [-namespace NS] [-run REGEXP]
// Prints one "PASS name" or "FAIL name: reason" line per check (and "INFO"
// lines with values worth comparing between daemons); exits 1 when any check
// failed.
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
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1/stats"
	eventtypes "github.com/containerd/containerd/api/events" // also registers the event payload types
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/sandbox"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/transfer"
	transferarchive "github.com/containerd/containerd/v2/core/transfer/archive"
	transferimage "github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

var (
	address   = flag.String("address", "", "daemon socket")
	imageRef  = flag.String("image", "", "busybox image in a plain-HTTP registry on 127.0.0.1")
	namespace = flag.String("namespace", "clientcheck2", "namespace to work in")
	runOnly   = flag.String("run", "", "only checks whose name matches")
	phase     = flag.String("restart-phase", "", "before: start a task logging to -log; after: (daemon restarted) find it running, then stop it")
	logPath   = flag.String("log", "", "the restart task's log file")
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

func info(format string, args ...any) {
	fmt.Printf("INFO "+format+"\n", args...)
}

func main() {
	flag.Parse()
	if *address == "" || *imageRef == "" {
		fmt.Fprintln(os.Stderr, "usage: clientcheck2 -address SOCK -image REF [-namespace NS] [-run REGEXP]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ctx = namespaces.WithNamespace(ctx, *namespace)
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
	if *phase != "" {
		if err := pullUnpack(e, ""); err != nil {
			fmt.Printf("FAIL pull_unpack: %v\n", err)
			os.Exit(1)
		}
		fn := restartBefore
		if *phase == "after" {
			fn = restartAfter
		}
		if err := fn(e, "restart"); err != nil {
			fmt.Printf("FAIL restart_%s: %v\n", *phase, err)
			os.Exit(1)
		}
		fmt.Printf("PASS restart_%s\n", *phase)
		return
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
	{"is_serving", isServing},
	{"version", version},
	{"server_info", serverInfo},
	{"default_runtime", defaultRuntime},
	{"runtime_info", runtimeInfo},
	{"snapshotter_platforms_capabilities", snapshotterPlatformsCapabilities},
	{"namespace_label_creates", namespaceLabelCreates},
	{"invalid_namespace_rejected", invalidNamespaceRejected},
	{"pull_unpack", pullUnpack},
	{"image_inspect", imageInspect},
	{"content_walk_and_read", contentWalkAndRead},
	{"snapshots_walk_usage", snapshotsWalkUsage},
	{"leases", leasesCheck},
	{"transfer_pull_unpack", transferPull},
	{"transfer_echo", transferEcho},
	{"transfer_export_import", transferExportImport},
	{"transfer_tag", transferTag},
	{"events_task_lifecycle", eventsTaskLifecycle},
	{"content_writer_resume", contentWriterResume},
	{"snapshots_lifecycle", snapshotsLifecycle},
	{"diff_compare_apply", diffCompareApply},
	{"non_empty_namespace_delete", nonEmptyNamespaceDelete},
	{"image_delete_sync", imageDeleteSync},
	{"client_export_import", clientExportImport},
	{"push_client_and_transfer", pushBoth},
	{"exec_with_stdin", execWithStdin},
	{"task_update_resources", taskUpdateResources},
	{"container_update_labels_filter", containerUpdateLabels},
	{"sandbox_store", sandboxStore},
	{"container_sandbox_id_extensions_filters", containerSandboxExtensions},
	{"events_publish_and_bad_filter", eventsPublish},
	{"plugins_filter", pluginsFilter},
	{"snapshotter_from_namespace_label", snapshotterFromNamespaceLabel},
	{"kill_exec_and_kill_all", killAllAndExecKill},
	{"lease_holds_then_releases", leaseHoldsThenReleases},
	{"image_and_content_label_updates", labelUpdates},
	{"binary_log_uri", binaryLogURI},
	{"output_and_exit_status", outputAndExitStatus},
	{"pids_pause_resume_status", pidsPauseResume},
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

func isServing(e *env, _ string) error {
	ok, err := e.client.IsServing(e.ctx)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("not serving")
	}
	return nil
}

func version(e *env, _ string) error {
	v, err := e.client.Version(e.ctx)
	if err != nil {
		return err
	}
	info("version %q revision %q", v.Version, v.Revision)
	if v.Version == "" {
		return errors.New("empty version")
	}
	return nil
}

func serverInfo(e *env, _ string) error {
	s1, err := e.client.Server(e.ctx)
	if err != nil {
		return err
	}
	s2, err := e.client.Server(e.ctx)
	if err != nil {
		return err
	}
	if s1.UUID == "" || s1.UUID != s2.UUID {
		return fmt.Errorf("server UUID %q then %q", s1.UUID, s2.UUID)
	}
	r, err := e.client.IntrospectionService().Server(e.ctx)
	if err != nil {
		return err
	}
	info("server pid>0=%v pidns>0=%v deprecations=%d", r.Pid > 0, r.Pidns > 0, len(r.Deprecations))
	for _, d := range r.Deprecations {
		info("deprecation %s: %s", d.ID, d.Message)
	}
	if r.Pid == 0 {
		return errors.New("server pid 0")
	}
	return nil
}

func defaultRuntime(e *env, _ string) error {
	r := e.client.Runtime()
	info("default runtime %q", r)
	if r != defaults.DefaultRuntime {
		return fmt.Errorf("default runtime %q, want %q", r, defaults.DefaultRuntime)
	}
	return nil
}

func runtimeInfo(e *env, _ string) error {
	ri, err := e.client.RuntimeInfo(e.ctx, "", nil)
	if err != nil {
		return err
	}
	info("runtime info name=%q version=%q options=%T features=%T annotations=%v", ri.Name, ri.Version.Version, ri.Options, ri.Features, ri.Annotations)
	if ri.Name == "" {
		return errors.New("empty runtime name")
	}
	if ri.Features == nil {
		return errors.New("no runtime features")
	}
	ri, err = e.client.RuntimeInfo(e.ctx, "", &options.Options{BinaryName: "runc"})
	if err != nil {
		return fmt.Errorf("with options: %w", err)
	}
	if o, ok := ri.Options.(*options.Options); !ok || o.BinaryName != "runc" {
		return fmt.Errorf("options echoed as %T %+v", ri.Options, ri.Options)
	}
	return nil
}

func snapshotterPlatformsCapabilities(e *env, _ string) error {
	m, err := e.client.GetSnapshotterSupportedPlatforms(e.ctx, "overlayfs")
	if err != nil {
		return err
	}
	if !m.Match(platforms.DefaultSpec()) {
		return fmt.Errorf("overlayfs does not support %v", platforms.DefaultSpec())
	}
	caps, err := e.client.GetSnapshotterCapabilities(e.ctx, "overlayfs")
	if err != nil {
		return err
	}
	info("overlayfs capabilities %v", caps)
	// containerd's overlayfs advertises "remap-ids" (and "only-remap-ids"
	// without idmapped mounts); the 2.x client's WithUserNSRemappedSnapshot
	// then passes the uid/gid mapping as snapshot labels instead of chowning
	// a copy of the image. Reported, not required.
	return nil
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

func invalidNamespaceRejected(e *env, id string) error {
	ctx := namespaces.WithNamespace(e.ctx, "bad--"+id)
	_, err := e.client.ContainerService().Create(ctx, containers.Container{
		ID:      id,
		Runtime: containers.RuntimeInfo{Name: defaults.DefaultRuntime},
		Spec:    &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte("{}")},
	})
	if err == nil {
		e.client.ContainerService().Delete(ctx, id)
		e.client.NamespaceService().Delete(ctx, "bad--"+id)
		return fmt.Errorf("container created in namespace %q", "bad--"+id)
	}
	if !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("want InvalidArgument, got %v", err)
	}
	return nil
}

func pullUnpack(e *env, _ string) error {
	img, err := e.client.Pull(e.ctx, *imageRef, containerd.WithPullUnpack)
	if err != nil {
		return err
	}
	ok, err := img.IsUnpacked(e.ctx, defaults.DefaultSnapshotter)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("image not unpacked after WithPullUnpack")
	}
	e.image = img
	return nil
}

func imageInspect(e *env, _ string) error {
	img, err := e.client.GetImage(e.ctx, *imageRef)
	if err != nil {
		return err
	}
	list, err := e.client.ListImages(e.ctx, "name=="+*imageRef)
	if err != nil {
		return err
	}
	if len(list) != 1 {
		return fmt.Errorf("ListImages name==: %d images", len(list))
	}
	spec, err := img.Spec(e.ctx)
	if err != nil {
		return err
	}
	rootfs, err := img.RootFS(e.ctx)
	if err != nil {
		return err
	}
	size, err := img.Size(e.ctx)
	if err != nil {
		return err
	}
	usage, err := img.Usage(e.ctx, containerd.WithSnapshotUsage())
	if err != nil {
		return fmt.Errorf("usage with snapshots: %w", err)
	}
	info("image os=%s arch=%s layers=%d size>0=%v usage>size=%v", spec.OS, spec.Architecture, len(rootfs), size > 0, usage > size)
	if len(rootfs) == 0 || size <= 0 || usage <= size {
		return fmt.Errorf("rootfs %d, size %d, usage %d", len(rootfs), size, usage)
	}
	return nil
}

func contentWalkAndRead(e *env, _ string) error {
	cs := e.client.ContentStore()
	target := e.image.Target()
	var n int
	if err := cs.Walk(e.ctx, func(i content.Info) error {
		n++
		return nil
	}); err != nil {
		return err
	}
	var labelled int
	if err := cs.Walk(e.ctx, func(i content.Info) error {
		labelled++
		return nil
	}, `labels."containerd.io/distribution.source.127.0.0.1"~=".*"`); err != nil {
		// the label key carries the registry host with a port
		info("walk with label filter: %v", err)
	}
	i, err := cs.Info(e.ctx, target.Digest)
	if err != nil {
		return err
	}
	var keys []string
	for k := range i.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	info("content blobs=%d target labels=%v", n, keys)
	ra, err := cs.ReaderAt(e.ctx, target)
	if err != nil {
		return err
	}
	defer ra.Close()
	b := make([]byte, 1)
	if _, err := ra.ReadAt(b, 0); err != nil || b[0] != '{' {
		return fmt.Errorf("first byte of the manifest %q, %v", b, err)
	}
	if ra.Size() != target.Size {
		return fmt.Errorf("reader size %d, want %d", ra.Size(), target.Size)
	}
	if n < 3 {
		return fmt.Errorf("%d blobs", n)
	}
	return nil
}

func snapshotsWalkUsage(e *env, _ string) error {
	sn := e.client.SnapshotService(defaults.DefaultSnapshotter)
	rootfs, err := e.image.RootFS(e.ctx)
	if err != nil {
		return err
	}
	var n int
	var chain string
	if err := sn.Walk(e.ctx, func(_ context.Context, i snapshots.Info) error {
		n++
		if i.Kind == snapshots.KindCommitted {
			chain = i.Name
		}
		return nil
	}); err != nil {
		return err
	}
	if n == 0 || chain == "" {
		return fmt.Errorf("%d snapshots", n)
	}
	st, err := sn.Stat(e.ctx, chain)
	if err != nil {
		return err
	}
	u, err := sn.Usage(e.ctx, chain)
	if err != nil {
		return err
	}
	var filtered int
	if err := sn.Walk(e.ctx, func(_ context.Context, i snapshots.Info) error {
		filtered++
		return nil
	}, "kind==committed"); err != nil {
		return fmt.Errorf("walk kind==committed: %w", err)
	}
	info("snapshots=%d layers=%d committed=%d usage.size>0=%v labels=%v", n, len(rootfs), filtered, u.Size > 0, st.Labels)
	return nil
}

func leasesCheck(e *env, _ string) error {
	lm := e.client.LeasesService()
	l, err := lm.Create(e.ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour), leases.WithLabel("clientcheck", "1"))
	if err != nil {
		return err
	}
	list, err := lm.List(e.ctx, `labels."clientcheck"==1`)
	if err != nil {
		return err
	}
	if len(list) != 1 || list[0].ID != l.ID {
		return fmt.Errorf("lease list %v", list)
	}
	if _, ok := list[0].Labels["containerd.io/gc.expire"]; !ok {
		return fmt.Errorf("lease labels %v lack gc.expire", list[0].Labels)
	}
	res := leases.Resource{ID: e.image.Target().Digest.String(), Type: "content"}
	if err := lm.AddResource(e.ctx, l, res); err != nil {
		return fmt.Errorf("AddResource: %w", err)
	}
	rs, err := lm.ListResources(e.ctx, l)
	if err != nil {
		return err
	}
	if len(rs) != 1 || rs[0] != res {
		return fmt.Errorf("resources %v", rs)
	}
	if err := lm.DeleteResource(e.ctx, l, res); err != nil {
		return err
	}
	if err := lm.Delete(e.ctx, l, leases.SynchronousDelete); err != nil {
		return err
	}
	if err := lm.Delete(e.ctx, l); !errdefs.IsNotFound(err) {
		return fmt.Errorf("second delete: want NotFound, got %v", err)
	}
	return nil
}

func transferPull(e *env, id string) error {
	ctx := namespaces.WithNamespace(e.ctx, *namespace+"-xfer")
	defer cleanNamespace(e, *namespace+"-xfer")
	reg, err := registry.NewOCIRegistry(ctx, *imageRef, registry.WithDefaultScheme("http"))
	if err != nil {
		return err
	}
	p := platforms.DefaultSpec()
	is := transferimage.NewStore(*imageRef, transferimage.WithPlatforms(p), transferimage.WithUnpack(p, ""), transferimage.WithAllMetadata)
	var events []string
	pf := func(pr transfer.Progress) {
		if len(events) == 0 || events[len(events)-1] != pr.Event {
			events = append(events, pr.Event)
		}
	}
	if err := e.client.Transfer(ctx, reg, is, transfer.WithProgress(pf)); err != nil {
		return err
	}
	info("transfer pull progress events %v", events)
	img, err := e.client.GetImage(ctx, *imageRef)
	if err != nil {
		return err
	}
	ok, err := img.IsUnpacked(ctx, defaults.DefaultSnapshotter)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("not unpacked after a transfer with WithUnpack")
	}
	if img.Target().Digest != e.image.Target().Digest {
		return fmt.Errorf("transfer pulled %s, Pull %s", img.Target().Digest, e.image.Target().Digest)
	}
	return nil
}

func cleanNamespace(e *env, ns string) {
	ctx := namespaces.WithNamespace(e.ctx, ns)
	imgs, _ := e.client.ImageService().List(ctx)
	for _, i := range imgs {
		e.client.ImageService().Delete(ctx, i.Name)
	}
	ls, _ := e.client.LeasesService().List(ctx)
	for _, l := range ls {
		e.client.LeasesService().Delete(ctx, l, leases.SynchronousDelete)
	}
	sn := e.client.SnapshotService(defaults.DefaultSnapshotter)
	for i := 0; i < 10; i++ {
		var keys []string
		sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			keys = append(keys, i.Name)
			return nil
		})
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			sn.Remove(ctx, k)
		}
	}
	e.client.ContentStore().Walk(ctx, func(i content.Info) error {
		e.client.ContentStore().Delete(ctx, i.Digest)
		return nil
	})
	e.client.NamespaceService().Delete(ctx, ns)
}

// containerd's TestTransferEcho: an import stream straight to an export stream
func transferEcho(e *env, _ string) error {
	for _, want := range [][]byte{bytes.Repeat([]byte("somecontent"), 17*1024), []byte("somecontent"), {}} {
		var got waitBuffer
		got.closed = make(chan struct{})
		err := e.client.Transfer(e.ctx, transferarchive.NewImageImportStream(bytes.NewReader(want), "application/octet-stream"),
			transferarchive.NewImageExportStream(&got, "application/octet-stream"))
		if err != nil {
			return fmt.Errorf("echo of %d bytes: %w", len(want), err)
		}
		select {
		case <-got.closed:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("echo of %d bytes: export stream never closed", len(want))
		}
		if !bytes.Equal(got.Bytes(), want) {
			return fmt.Errorf("echo of %d bytes returned %d bytes", len(want), got.Len())
		}
	}
	return nil
}

type waitBuffer struct {
	bytes.Buffer
	closed chan struct{}
}

func (w *waitBuffer) Close() error {
	select {
	case <-w.closed:
	default:
		close(w.closed)
	}
	return nil
}

func transferExportImport(e *env, _ string) error {
	var tar waitBuffer
	tar.closed = make(chan struct{})
	src := transferimage.NewStore(*imageRef)
	if err := e.client.Transfer(e.ctx, src, transferarchive.NewImageExportStream(&tar, "")); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	<-tar.closed
	ns := *namespace + "-import"
	ctx := namespaces.WithNamespace(e.ctx, ns)
	defer cleanNamespace(e, ns)
	p := platforms.DefaultSpec()
	dst := transferimage.NewStore("", transferimage.WithPlatforms(p), transferimage.WithUnpack(p, ""),
		transferimage.WithNamedPrefix("imported", true))
	if err := e.client.Transfer(ctx, transferarchive.NewImageImportStream(bytes.NewReader(tar.Bytes()), ""), dst); err != nil {
		return fmt.Errorf("import of %d bytes: %w", tar.Len(), err)
	}
	imgs, err := e.client.ListImages(ctx)
	if err != nil {
		return err
	}
	var names []string
	for _, i := range imgs {
		names = append(names, i.Name())
	}
	sort.Strings(names)
	info("export %d bytes; imported as %v", tar.Len(), names)
	if len(imgs) == 0 {
		return errors.New("nothing imported")
	}
	ok, err := imgs[0].IsUnpacked(ctx, defaults.DefaultSnapshotter)
	if err != nil || !ok {
		return fmt.Errorf("imported image unpacked %v, %v", ok, err)
	}
	return nil
}

func transferTag(e *env, id string) error {
	name := "example.test/clientcheck/" + id + ":tagged"
	if err := e.client.Transfer(e.ctx, transferimage.NewStore(*imageRef), transferimage.NewStore(name)); err != nil {
		return err
	}
	defer e.client.ImageService().Delete(e.ctx, name)
	img, err := e.client.GetImage(e.ctx, name)
	if err != nil {
		return err
	}
	if img.Target().Digest != e.image.Target().Digest {
		return fmt.Errorf("tag points at %s", img.Target().Digest)
	}
	return nil
}

func eventsTaskLifecycle(e *env, id string) error {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	ch, errs := e.client.Subscribe(ctx, `namespace==`+*namespace+`,topic~="/tasks/"`, `namespace==`+*namespace+`,topic=="/containers/create"`)
	time.Sleep(100 * time.Millisecond)
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("true")})
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.NewTask(e.ctx, cio.NullIO)
	if err != nil {
		return err
	}
	wch, err := t.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := t.Start(e.ctx); err != nil {
		return err
	}
	if _, err := waitExit(e.ctx, wch); err != nil {
		return err
	}
	if _, err := t.Delete(e.ctx); err != nil {
		return err
	}
	want := []string{"/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"}
	var got []string
	timeout := time.After(10 * time.Second)
	for len(got) < len(want) {
		select {
		case env := <-ch:
			v, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				return fmt.Errorf("decode %s (%s): %w", env.Topic, env.Event.GetTypeUrl(), err)
			}
			if env.Namespace != *namespace {
				return fmt.Errorf("event %s in namespace %q", env.Topic, env.Namespace)
			}
			got = append(got, env.Topic)
			_ = v
		case err := <-errs:
			return fmt.Errorf("subscription: %w (got %v)", err, got)
		case <-timeout:
			return fmt.Errorf("events %v, want %v", got, want)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		return fmt.Errorf("events %v, want %v", got, want)
	}
	return nil
}

func containerUpdateLabels(e *env, id string) error {
	c, err := e.newContainer(id, nil, containerd.WithContainerLabels(map[string]string{"clientcheck": id}))
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	list, err := e.client.Containers(e.ctx, `labels."clientcheck"==`+id)
	if err != nil {
		return err
	}
	if len(list) != 1 || list[0].ID() != id {
		return fmt.Errorf("filtered list %d containers", len(list))
	}
	if _, err := c.SetLabels(e.ctx, map[string]string{"extra": "x"}); err != nil {
		return err
	}
	labels, err := c.Labels(e.ctx)
	if err != nil {
		return err
	}
	if labels["extra"] != "x" || labels["clientcheck"] != id {
		return fmt.Errorf("labels %v", labels)
	}
	ci, err := c.Info(e.ctx)
	if err != nil {
		return err
	}
	if ci.Runtime.Name != defaults.DefaultRuntime || ci.Snapshotter != defaults.DefaultSnapshotter || ci.Image != *imageRef {
		return fmt.Errorf("info runtime %q snapshotter %q image %q", ci.Runtime.Name, ci.Snapshotter, ci.Image)
	}
	l, err := e.client.LoadContainer(e.ctx, id)
	if err != nil {
		return err
	}
	if _, err := l.Task(e.ctx, nil); !errdefs.IsNotFound(err) {
		return fmt.Errorf("task of a container without one: want NotFound, got %v", err)
	}
	if _, err := e.client.NewContainer(e.ctx, id, containerd.WithNewSpec()); !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("second container %q: want AlreadyExists, got %v", id, err)
	}
	return nil
}

func sandboxStore(e *env, id string) error {
	st := e.client.SandboxStore()
	spec, err := typeurl.MarshalAnyToProto(&specs.Spec{Version: "1.1.0"})
	if err != nil {
		return err
	}
	sb, err := st.Create(e.ctx, sandbox.Sandbox{
		ID:        id,
		Labels:    map[string]string{"a": "b"},
		Runtime:   sandbox.RuntimeOpts{Name: defaults.DefaultRuntime},
		Spec:      spec,
		Sandboxer: "podsandbox",
	})
	if err != nil {
		return err
	}
	defer st.Delete(e.ctx, id)
	if sb.CreatedAt.IsZero() {
		return errors.New("created sandbox has no CreatedAt")
	}
	got, err := st.Get(e.ctx, id)
	if err != nil {
		return err
	}
	if got.Labels["a"] != "b" || got.Runtime.Name != defaults.DefaultRuntime || got.Sandboxer != "podsandbox" {
		return fmt.Errorf("sandbox %+v", got)
	}
	got.Labels["c"] = "d"
	if _, err := st.Update(e.ctx, got, "labels.c"); err != nil {
		return fmt.Errorf("update labels.c: %w", err)
	}
	list, err := st.List(e.ctx, `labels."c"==d`)
	if err != nil {
		return err
	}
	if len(list) != 1 {
		return fmt.Errorf("filtered list: %d sandboxes", len(list))
	}
	if err := st.Delete(e.ctx, id); err != nil {
		return err
	}
	if _, err := st.Get(e.ctx, id); !errdefs.IsNotFound(err) {
		return fmt.Errorf("get after delete: want NotFound, got %v", err)
	}
	return nil
}

func pidsPauseResume(e *env, id string) error {
	c, t, err := e.runningTask(id)
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	pids, err := t.Pids(e.ctx)
	if err != nil {
		return err
	}
	if len(pids) != 1 || pids[0].Pid != t.Pid() {
		return fmt.Errorf("pids %+v, init %d", pids, t.Pid())
	}
	if err := t.Pause(e.ctx); err != nil {
		return err
	}
	st, err := t.Status(e.ctx)
	if err != nil {
		return err
	}
	if st.Status != containerd.Paused {
		return fmt.Errorf("status after pause %q", st.Status)
	}
	if err := t.Resume(e.ctx); err != nil {
		return err
	}
	st, err = t.Status(e.ctx)
	if err != nil {
		return err
	}
	if st.Status != containerd.Running {
		return fmt.Errorf("status after resume %q", st.Status)
	}
	if _, err := t.Delete(e.ctx); !errdefs.IsFailedPrecondition(err) {
		return fmt.Errorf("delete of a running task: want FailedPrecondition, got %v", err)
	}
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
	s, ok := data.(*stats.Metrics)
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

// A resumable content ingest: written in two sessions under one ref, the
// first left open, then committed with labels (containerd's content tests).
func contentWriterResume(e *env, id string) error {
	ctx, done, err := e.client.WithLease(e.ctx)
	if err != nil {
		return err
	}
	defer done(ctx)
	cs := e.client.ContentStore()
	data := bytes.Repeat([]byte(id), (1<<20)/len(id))
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	ref := "clientcheck-" + id
	w, err := content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		return err
	}
	half := len(data) / 2
	if _, err := w.Write(data[:half]); err != nil {
		return err
	}
	w.Close()
	st, err := cs.Status(ctx, ref)
	if err != nil {
		return fmt.Errorf("status of the open ingest: %w", err)
	}
	if st.Offset != int64(half) || st.Total != desc.Size {
		return fmt.Errorf("status offset %d total %d, want %d %d", st.Offset, st.Total, half, desc.Size)
	}
	sts, err := cs.ListStatuses(ctx, "ref=="+ref)
	if err != nil || len(sts) != 1 {
		return fmt.Errorf("ListStatuses ref==: %v, %v", sts, err)
	}
	w, err = content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	ws, err := w.Status()
	if err != nil {
		return err
	}
	if ws.Offset != int64(half) {
		return fmt.Errorf("reopened at %d, want %d", ws.Offset, half)
	}
	if _, err := w.Write(data[half:]); err != nil {
		return err
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest, content.WithLabels(map[string]string{"clientcheck": "1"})); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	i, err := cs.Info(ctx, desc.Digest)
	if err != nil {
		return err
	}
	if i.Labels["clientcheck"] != "1" || i.Size != desc.Size {
		return fmt.Errorf("info %+v", i)
	}
	// a second commit of the same content: AlreadyExists
	w, err = content.OpenWriter(ctx, cs, content.WithRef(ref+"-again"), content.WithDescriptor(desc))
	if !errdefs.IsAlreadyExists(err) {
		if err == nil {
			w.Close()
		}
		return fmt.Errorf("writer for existing content: want AlreadyExists, got %v", err)
	}
	return cs.Delete(ctx, desc.Digest)
}

func snapshotsLifecycle(e *env, id string) error {
	sn := e.client.SnapshotService(defaults.DefaultSnapshotter)
	diffIDs, err := e.image.RootFS(e.ctx)
	if err != nil {
		return err
	}
	parent := identity.ChainID(diffIDs).String()
	active, committed, view := id+"-active", id+"-committed", id+"-view"
	defer func() {
		sn.Remove(e.ctx, view)
		sn.Remove(e.ctx, committed)
		sn.Remove(e.ctx, active)
	}()
	mounts, err := sn.Prepare(e.ctx, active, parent, snapshots.WithLabels(map[string]string{"a": "b"}))
	if err != nil {
		return err
	}
	if len(mounts) == 0 {
		return errors.New("no mounts")
	}
	st, err := sn.Stat(e.ctx, active)
	if err != nil {
		return err
	}
	if st.Kind != snapshots.KindActive || st.Parent != parent || st.Labels["a"] != "b" {
		return fmt.Errorf("stat %+v", st)
	}
	st.Labels = map[string]string{"c": "d"}
	up, err := sn.Update(e.ctx, st, "labels.c")
	if err != nil {
		return fmt.Errorf("update labels.c: %w", err)
	}
	if up.Labels["a"] != "b" || up.Labels["c"] != "d" {
		return fmt.Errorf("labels after update of labels.c: %v", up.Labels)
	}
	if err := mount.WithTempMount(e.ctx, mounts, func(root string) error {
		return os.WriteFile(filepath.Join(root, "clientcheck"), []byte(id), 0o644)
	}); err != nil {
		return fmt.Errorf("write into the active snapshot: %w", err)
	}
	if _, err := sn.Prepare(e.ctx, active, parent); !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("second prepare of %q: want AlreadyExists, got %v", active, err)
	}
	if err := sn.Commit(e.ctx, committed, active); err != nil {
		return err
	}
	vm, err := sn.View(e.ctx, view, committed)
	if err != nil {
		return err
	}
	if err := mount.WithReadonlyTempMount(e.ctx, vm, func(root string) error {
		b, err := os.ReadFile(filepath.Join(root, "clientcheck"))
		if err != nil || string(b) != id {
			return fmt.Errorf("file in view %q, %v", b, err)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := sn.Remove(e.ctx, committed); !errdefs.IsFailedPrecondition(err) {
		return fmt.Errorf("remove of a parent: want FailedPrecondition, got %v", err)
	}
	if _, err := sn.Mounts(e.ctx, committed); !errdefs.IsFailedPrecondition(err) {
		return fmt.Errorf("mounts of a committed snapshot: want FailedPrecondition, got %v", err)
	}
	if c, ok := sn.(snapshots.Cleaner); ok {
		if err := c.Cleanup(e.ctx); err != nil && !errdefs.IsNotImplemented(err) {
			return fmt.Errorf("cleanup: %w", err)
		}
	}
	return nil
}

// Diff.Compare of a changed snapshot against its parent, and Diff.Apply of
// the layer onto a fresh snapshot (docker commit, BuildKit exporters).
func diffCompareApply(e *env, id string) error {
	ctx, done, err := e.client.WithLease(e.ctx)
	if err != nil {
		return err
	}
	defer done(ctx)
	sn := e.client.SnapshotService(defaults.DefaultSnapshotter)
	diffIDs, err := e.image.RootFS(ctx)
	if err != nil {
		return err
	}
	parent := identity.ChainID(diffIDs).String()
	upper, err := sn.Prepare(ctx, id+"-upper", parent)
	if err != nil {
		return err
	}
	if err := mount.WithTempMount(ctx, upper, func(root string) error {
		if err := os.WriteFile(filepath.Join(root, "added"), []byte("new file"), 0o600); err != nil {
			return err
		}
		return os.Remove(filepath.Join(root, "bin", "sh"))
	}); err != nil {
		return err
	}
	lower, err := sn.View(ctx, id+"-lower", parent)
	if err != nil {
		return err
	}
	layer, err := e.client.DiffService().Compare(ctx, lower, upper, diff.WithMediaType(ocispec.MediaTypeImageLayerGzip), diff.WithReference("clientcheck-"+id))
	if err != nil {
		return fmt.Errorf("compare: %w", err)
	}
	info("compare: media type %s, labels %v", layer.MediaType, layer.Annotations)
	if layer.MediaType != ocispec.MediaTypeImageLayerGzip {
		return fmt.Errorf("layer media type %q", layer.MediaType)
	}
	ci, err := e.client.ContentStore().Info(ctx, layer.Digest)
	if err != nil {
		return err
	}
	if ci.Labels["containerd.io/uncompressed"] == "" {
		return fmt.Errorf("layer labels %v lack containerd.io/uncompressed", ci.Labels)
	}
	target, err := sn.Prepare(ctx, id+"-target", parent)
	if err != nil {
		return err
	}
	applied, err := e.client.DiffService().Apply(ctx, layer, target)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if applied.Digest.String() != ci.Labels["containerd.io/uncompressed"] {
		return fmt.Errorf("apply returned %s, uncompressed label %s", applied.Digest, ci.Labels["containerd.io/uncompressed"])
	}
	return mount.WithReadonlyTempMount(ctx, target, func(root string) error {
		if b, err := os.ReadFile(filepath.Join(root, "added")); err != nil || string(b) != "new file" {
			return fmt.Errorf("added file %q, %v", b, err)
		}
		if _, err := os.Lstat(filepath.Join(root, "bin", "sh")); !os.IsNotExist(err) {
			return fmt.Errorf("deleted /bin/sh: %v", err)
		}
		return nil
	})
}

func nonEmptyNamespaceDelete(e *env, _ string) error {
	err := e.client.NamespaceService().Delete(e.ctx, *namespace)
	if !errdefs.IsFailedPrecondition(err) {
		return fmt.Errorf("delete of a namespace holding images: want FailedPrecondition, got %v", err)
	}
	return nil
}

func imageDeleteSync(e *env, id string) error {
	name := "example.test/clientcheck/" + id + ":sync"
	is := e.client.ImageService()
	img := e.image.Metadata()
	img.Name = name
	if _, err := is.Create(e.ctx, img); err != nil {
		return err
	}
	if _, err := is.Create(e.ctx, img); !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("second create: want AlreadyExists, got %v", err)
	}
	if err := is.Delete(e.ctx, name, images.SynchronousDelete()); err != nil {
		return err
	}
	if err := is.Delete(e.ctx, name); !errdefs.IsNotFound(err) {
		return fmt.Errorf("second delete: want NotFound, got %v", err)
	}
	// the original image keeps its content
	if _, err := e.client.ContentStore().Info(e.ctx, e.image.Target().Digest); err != nil {
		return fmt.Errorf("content of the remaining image: %w", err)
	}
	return nil
}

func execWithStdin(e *env, id string) error {
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
	pspec.Args = []string{"sh", "-c", "cat; echo done"}
	var out bytes.Buffer
	p, err := t.Exec(e.ctx, id+"-cat", pspec, cio.NewCreator(cio.WithStreams(strings.NewReader("from stdin\n"), &out, io.Discard)))
	if err != nil {
		return err
	}
	ch, err := p.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := p.Start(e.ctx); err != nil {
		return err
	}
	if err := p.CloseIO(e.ctx, containerd.WithStdinCloser); err != nil {
		return err
	}
	if code, err := waitExit(e.ctx, ch); err != nil || code != 0 {
		return fmt.Errorf("exit %d, %v", code, err)
	}
	p.IO().Wait()
	if out.String() != "from stdin\ndone\n" {
		return fmt.Errorf("output %q", out.String())
	}
	ps, err := t.Pids(e.ctx)
	if err != nil {
		return err
	}
	info("pids with an exited exec: %d", len(ps))
	if _, err := p.Delete(e.ctx); err != nil {
		return err
	}
	if _, err := t.LoadProcess(e.ctx, id+"-cat", nil); !errdefs.IsNotFound(err) {
		return fmt.Errorf("load of a deleted exec: want NotFound, got %v", err)
	}
	return nil
}

func taskUpdateResources(e *env, id string) error {
	c, t, err := e.runningTask(id, oci.WithMemoryLimit(64<<20))
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	limit := int64(128 << 20)
	if err := t.Update(e.ctx, containerd.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})); err != nil {
		return err
	}
	m, err := t.Metrics(e.ctx)
	if err != nil {
		return err
	}
	data, err := typeurl.UnmarshalAny(m.Data)
	if err != nil {
		return err
	}
	s, ok := data.(*stats.Metrics)
	if !ok {
		return fmt.Errorf("metrics %T", data)
	}
	if s.Memory.Usage.Limit != uint64(limit) {
		return fmt.Errorf("memory limit after update %d, want %d", s.Memory.Usage.Limit, limit)
	}
	return nil
}

// Client-side export and import (the images archive package over the
// content and image stores), as nerdctl save/load do.
func clientExportImport(e *env, _ string) error {
	var buf bytes.Buffer
	if err := e.client.Export(e.ctx, &buf, archive.WithImage(e.client.ImageService(), *imageRef), archive.WithPlatform(platforms.Default())); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	ns := *namespace + "-load"
	ctx := namespaces.WithNamespace(e.ctx, ns)
	defer cleanNamespace(e, ns)
	imgs, err := e.client.Import(ctx, bytes.NewReader(buf.Bytes()))
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	var names []string
	for _, i := range imgs {
		names = append(names, i.Name)
	}
	info("client export %d bytes, import %v", buf.Len(), names)
	if len(imgs) == 0 {
		return errors.New("nothing imported")
	}
	img := containerd.NewImage(e.client, imgs[0])
	if err := img.Unpack(ctx, defaults.DefaultSnapshotter); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	return nil
}

// Client-side push (remotes over the content store) and a transfer push.
func pushBoth(e *env, id string) error {
	host := strings.SplitN(*imageRef, "/", 2)[0]
	ref := host + "/clientcheck/" + id + ":pushed"
	if err := e.client.Push(e.ctx, ref, e.image.Target()); err != nil {
		return fmt.Errorf("client push: %w", err)
	}
	ref2 := host + "/clientcheck/" + id + ":transferred"
	reg, err := registry.NewOCIRegistry(e.ctx, ref2, registry.WithDefaultScheme("http"))
	if err != nil {
		return err
	}
	if err := e.client.Transfer(e.ctx, transferimage.NewStore(*imageRef), reg); err != nil {
		return fmt.Errorf("transfer push: %w", err)
	}
	// fetch both back (metadata only) in a namespace of their own
	ns := *namespace + "-fetch"
	ctx := namespaces.WithNamespace(e.ctx, ns)
	defer cleanNamespace(e, ns)
	for _, r := range []string{ref, ref2} {
		img, err := e.client.Fetch(ctx, r)
		if err != nil {
			return fmt.Errorf("fetch %s: %w", r, err)
		}
		if img.Target.Digest != e.image.Target().Digest {
			return fmt.Errorf("%s is %s, want %s", r, img.Target.Digest, e.image.Target().Digest)
		}
	}
	return nil
}

// containerd 2.x's container records carry a sandbox id; extensions and a
// spec update round-trip; list filters on image and runtime.
func containerSandboxExtensions(e *env, id string) error {
	ext := &apitypes.Platform{OS: "linux", Architecture: "clientcheck"}
	c, err := e.newContainer(id, nil, containerd.WithSandbox("sb-"+id), containerd.WithContainerExtension("clientcheck", ext))
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	ci, err := c.Info(e.ctx)
	if err != nil {
		return err
	}
	if ci.SandboxID != "sb-"+id {
		return fmt.Errorf("sandbox id %q, want %q", ci.SandboxID, "sb-"+id)
	}
	exts, err := c.Extensions(e.ctx)
	if err != nil {
		return err
	}
	a, ok := exts["clientcheck"]
	if !ok {
		return fmt.Errorf("extensions %v", exts)
	}
	var got apitypes.Platform
	if err := typeurl.UnmarshalTo(a, &got); err != nil || got.Architecture != "clientcheck" {
		return fmt.Errorf("extension %+v, %v", &got, err)
	}
	if err := c.Update(e.ctx, containerd.UpdateContainerOpts(containerd.WithSpec(&oci.Spec{Version: "1.1.0", Hostname: id}))); err != nil {
		return fmt.Errorf("update spec: %w", err)
	}
	spec, err := c.Spec(e.ctx)
	if err != nil || spec.Hostname != id {
		return fmt.Errorf("spec after update: %v, %v", spec, err)
	}
	for _, f := range []string{"image==" + *imageRef, "runtime.name==" + defaults.DefaultRuntime, "id==" + id, `id~="^` + id + `$"`, "sandbox==sb-" + id} {
		list, err := e.client.Containers(e.ctx, f+",id=="+id)
		if err != nil {
			return fmt.Errorf("filter %q: %w", f, err)
		}
		if len(list) != 1 {
			info("filter %q: %d containers", f, len(list))
			if !strings.HasPrefix(f, "sandbox") {
				return fmt.Errorf("filter %q: %d containers", f, len(list))
			}
		}
	}
	return nil
}

func eventsPublish(e *env, id string) error {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	topic := "/clientcheck/" + id
	ch, errs := e.client.Subscribe(ctx, `topic=="`+topic+`"`)
	time.Sleep(100 * time.Millisecond)
	ev := &eventtypes.ContainerCreate{ID: id, Image: "x"}
	if err := e.client.EventService().Publish(e.ctx, topic, ev); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if err := e.client.EventService().Publish(e.ctx, "no-slash", ev); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("publish on topic without a slash: want InvalidArgument, got %v", err)
	}
	select {
	case env := <-ch:
		v, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			return err
		}
		cc, ok := v.(*eventtypes.ContainerCreate)
		if !ok || cc.ID != id || env.Namespace != *namespace || env.Topic != topic {
			return fmt.Errorf("envelope %+v %+v", env, v)
		}
	case err := <-errs:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("published event not received")
	}
	// an invalid filter fails the subscription
	ctx2, cancel2 := context.WithCancel(e.ctx)
	defer cancel2()
	_, errs2 := e.client.Subscribe(ctx2, `topic==`)
	select {
	case err := <-errs2:
		// containerd 2.1.9 answers Unknown ("subscription error: failed
		// parsing subscription filters: ..."), stevedored InvalidArgument;
		// the client passes either on unconverted
		info("subscribe with filter %q: %v", "topic==", err)
		if err == nil {
			return errors.New("invalid filter: nil error")
		}
	case <-time.After(3 * time.Second):
		return errors.New("subscription with an invalid filter not refused")
	}
	return nil
}

func pluginsFilter(e *env, _ string) error {
	in := e.client.IntrospectionService()
	resp, err := in.Plugins(e.ctx, "type==io.containerd.snapshotter.v1")
	if err != nil {
		return err
	}
	var ids []string
	for _, p := range resp.Plugins {
		ids = append(ids, p.ID)
	}
	info("snapshotter plugins %v", ids)
	resp, err = in.Plugins(e.ctx, "type==io.containerd.grpc.v1,id==transfer", "id==streaming")
	if err != nil {
		return err
	}
	if len(resp.Plugins) != 2 {
		return fmt.Errorf("transfer and streaming plugins: %d", len(resp.Plugins))
	}
	for _, p := range resp.Plugins {
		if p.InitErr != nil {
			return fmt.Errorf("%s: %v", p.ID, p.InitErr)
		}
	}
	_, err = in.PluginInfo(e.ctx, "io.containerd.snapshotter.v1", "overlayfs", nil)
	info("PluginInfo(overlayfs): %v", err)
	return nil
}

// the namespace's default-snapshotter label picks the snapshotter of a
// pull (client.resolveSnapshotterName)
func snapshotterFromNamespaceLabel(e *env, id string) error {
	ns := *namespace + "-native"
	ctx := namespaces.WithNamespace(e.ctx, ns)
	if err := e.client.NamespaceService().Create(ctx, ns, map[string]string{defaults.DefaultSnapshotterNSLabel: "native"}); err != nil {
		return err
	}
	defer cleanNamespaceSnap(e, ns, "native")
	c2, err := containerd.New(*address, containerd.WithDefaultNamespace(ns))
	if err != nil {
		return err
	}
	defer c2.Close()
	img, err := c2.Pull(ctx, *imageRef, containerd.WithPullUnpack)
	if err != nil {
		return err
	}
	ok, err := img.IsUnpacked(ctx, "native")
	if err != nil || !ok {
		return fmt.Errorf("unpacked on native: %v, %v", ok, err)
	}
	return nil
}

func cleanNamespaceSnap(e *env, ns, snapshotter string) {
	ctx := namespaces.WithNamespace(e.ctx, ns)
	sn := e.client.SnapshotService(snapshotter)
	imgs, _ := e.client.ImageService().List(ctx)
	for _, i := range imgs {
		e.client.ImageService().Delete(ctx, i.Name)
	}
	for i := 0; i < 10; i++ {
		var keys []string
		sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			keys = append(keys, i.Name)
			return nil
		})
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			sn.Remove(ctx, k)
		}
	}
	cleanNamespace(e, ns)
}

func killAllAndExecKill(e *env, id string) error {
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
	pspec.Args = []string{"sleep", "300"}
	p, err := t.Exec(e.ctx, id+"-sleep", pspec, cio.NullIO)
	if err != nil {
		return err
	}
	pch, err := p.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := p.Start(e.ctx); err != nil {
		return err
	}
	if err := t.Kill(e.ctx, syscall.SIGTERM, containerd.WithKillExecID(id+"-sleep")); err != nil {
		return fmt.Errorf("kill exec: %w", err)
	}
	if code, err := waitExit(e.ctx, pch); err != nil || code != 128+uint32(syscall.SIGTERM) {
		return fmt.Errorf("exec exit %d, %v", code, err)
	}
	if _, err := p.Delete(e.ctx); err != nil {
		return err
	}
	ch, err := t.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := t.Kill(e.ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil {
		return fmt.Errorf("kill all: %w", err)
	}
	if code, err := waitExit(e.ctx, ch); err != nil || code != 137 {
		return fmt.Errorf("init exit %d, %v", code, err)
	}
	if err := t.Kill(e.ctx, syscall.SIGKILL); !errdefs.IsNotFound(err) {
		info("kill of a stopped task: %v", err)
	}
	return nil
}

// What BuildKit relies on: objects made under a lease live while it does
// and go with it (a synchronous delete collects them before returning).
func leaseHoldsThenReleases(e *env, id string) error {
	lm := e.client.LeasesService()
	l, err := lm.Create(e.ctx, leases.WithID("clientcheck-"+id))
	if err != nil {
		return err
	}
	ctx := leases.WithLease(e.ctx, l.ID)
	sn := e.client.SnapshotService(defaults.DefaultSnapshotter)
	if _, err := sn.Prepare(ctx, id+"-leased", ""); err != nil {
		lm.Delete(e.ctx, l)
		return err
	}
	data := []byte("leased " + id)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := content.WriteBlob(ctx, e.client.ContentStore(), "clientcheck-"+id, bytes.NewReader(data), desc); err != nil {
		lm.Delete(e.ctx, l)
		return err
	}
	rs, err := lm.ListResources(e.ctx, l)
	if err != nil {
		return err
	}
	var kinds []string
	for _, r := range rs {
		kinds = append(kinds, r.Type)
	}
	sort.Strings(kinds)
	info("lease resources %v", kinds)
	if len(rs) != 2 {
		return fmt.Errorf("lease resources %+v", rs)
	}
	// a GC while the lease lives keeps both
	if err := lm.Delete(e.ctx, leases.Lease{ID: "clientcheck-none-" + id}, leases.SynchronousDelete); !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete of a missing lease: want NotFound, got %v", err)
	}
	if _, err := sn.Stat(e.ctx, id+"-leased"); err != nil {
		return fmt.Errorf("leased snapshot: %w", err)
	}
	if err := lm.Delete(e.ctx, l, leases.SynchronousDelete); err != nil {
		return err
	}
	if _, err := sn.Stat(e.ctx, id+"-leased"); !errdefs.IsNotFound(err) {
		return fmt.Errorf("snapshot after its lease was deleted (sync): want NotFound, got %v", err)
	}
	if _, err := e.client.ContentStore().Info(e.ctx, desc.Digest); !errdefs.IsNotFound(err) {
		return fmt.Errorf("blob after its lease was deleted (sync): want NotFound, got %v", err)
	}
	return nil
}

func labelUpdates(e *env, id string) error {
	is := e.client.ImageService()
	img := e.image.Metadata()
	img.Labels = map[string]string{"x": id, "y": "dropped?"}
	up, err := is.Update(e.ctx, img, "labels.x")
	if err != nil {
		return fmt.Errorf("image update labels.x: %w", err)
	}
	if up.Labels["x"] != id || up.Labels["y"] != "" {
		return fmt.Errorf("image labels after labels.x: %v", up.Labels)
	}
	up.Labels = nil
	if _, err := is.Update(e.ctx, up, "labels.x"); err != nil {
		return err
	}
	cs := e.client.ContentStore()
	ci, err := cs.Info(e.ctx, e.image.Target().Digest)
	if err != nil {
		return err
	}
	ci.Labels = map[string]string{"clientcheck": id}
	nci, err := cs.Update(e.ctx, ci, "labels.clientcheck")
	if err != nil {
		return fmt.Errorf("content update: %w", err)
	}
	if nci.Labels["clientcheck"] != id || nci.Labels["containerd.io/gc.ref.content.config"] == "" {
		return fmt.Errorf("content labels after labels.clientcheck: %v", nci.Labels)
	}
	nci.Labels = nil
	if _, err := cs.Update(e.ctx, nci, "labels.clientcheck"); err != nil {
		return err
	}
	if _, err := cs.Update(e.ctx, content.Info{Digest: nci.Digest}, "size"); !errdefs.IsInvalidArgument(err) {
		return fmt.Errorf("content update of size: want InvalidArgument, got %v", err)
	}
	return nil
}

// A task that outlives a daemon restart, as Docker's live restore and
// nerdctl rely on: started with its output in a log file (cio.LogFile) ...
func restartBefore(e *env, id string) error {
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("sh", "-c", "while true; do echo tick; sleep 0.1; done")})
	if err != nil {
		return err
	}
	t, err := c.NewTask(e.ctx, cio.LogFile(*logPath))
	if err != nil {
		cleanup(e, c)
		return err
	}
	if err := t.Start(e.ctx); err != nil {
		cleanup(e, c)
		return err
	}
	time.Sleep(300 * time.Millisecond)
	if b, _ := os.ReadFile(*logPath); !bytes.Contains(b, []byte("tick")) {
		cleanup(e, c)
		return fmt.Errorf("log file %q", b)
	}
	return nil
}

// ... and found again by a new client after the restart: running, still
// writing its log, then killed, waited for and deleted.
func restartAfter(e *env, id string) error {
	c, err := e.client.LoadContainer(e.ctx, id)
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.Task(e.ctx, nil)
	if err != nil {
		return fmt.Errorf("task after restart: %w", err)
	}
	st, err := t.Status(e.ctx)
	if err != nil {
		return err
	}
	if st.Status != containerd.Running {
		return fmt.Errorf("status after restart %q", st.Status)
	}
	before, _ := os.ReadFile(*logPath)
	time.Sleep(500 * time.Millisecond)
	after, _ := os.ReadFile(*logPath)
	if len(after) <= len(before) {
		return fmt.Errorf("log stopped growing after the restart (%d bytes)", len(after))
	}
	ch, err := t.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := t.Kill(e.ctx, syscall.SIGKILL); err != nil {
		return err
	}
	if code, err := waitExit(e.ctx, ch); err != nil || code != 137 {
		return fmt.Errorf("exit %d, %v", code, err)
	}
	ds, err := t.Delete(e.ctx)
	if err != nil {
		return err
	}
	if ds.ExitCode() != 137 {
		return fmt.Errorf("delete status %d", ds.ExitCode())
	}
	return nil
}

// A binary:// stdio URI (cio.BinaryIO: a logging binary reading the
// task's stdout on fd 3 and stderr on fd 4, ready when it closes fd 5), as
// nerdctl's log drivers use.
func binaryLogURI(e *env, id string) error {
	dir, err := os.MkdirTemp("", "clientcheck-binlog-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "out")
	c, err := e.newContainer(id, []oci.SpecOpts{oci.WithProcessArgs("echo", "via-binary")})
	if err != nil {
		return err
	}
	defer cleanup(e, c)
	t, err := c.NewTask(e.ctx, cio.BinaryIO("/bin/sh", map[string]string{"-c": `echo "$CONTAINER_NAMESPACE $CONTAINER_ID" > ` + out + "; exec 5>&-; cat <&3 >> " + out}))
	if err != nil {
		return fmt.Errorf("binary:// logging: %w", err)
	}
	ch, err := t.Wait(e.ctx)
	if err != nil {
		return err
	}
	if err := t.Start(e.ctx); err != nil {
		return err
	}
	waitExit(e.ctx, ch)
	t.Delete(e.ctx)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if b, _ := os.ReadFile(out); string(b) == *namespace+" "+id+"\nvia-binary\n" {
			info("binary:// logging: works")
			return nil
		}
	}
	b, _ := os.ReadFile(out)
	return fmt.Errorf("logging binary wrote %q", b)
}

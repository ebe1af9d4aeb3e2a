package main

// `testenv up`: lays out the directory, starts etcd, kube-apiserver and kube-controller-manager,
// waits until the API server is ready and the controllers work, prints one JSON line saying where
// everything is, and tears all of it down on SIGINT/SIGTERM, on end of standard input (so a test
// process that dies without cleaning up still stops its control plane), or when a component dies.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// readyLine is what `up` prints on standard output once the control plane serves.
type readyLine struct {
	Server     string `json:"server"`
	Kubeconfig string `json:"kubeconfig"`
	CAFile     string `json:"caFile"`
	AuditLog   string `json:"auditLog"`
	Dir        string `json:"dir"`
}

// An audit policy that records, for every request, who made it, the verb, the resource and the
// response code (level Metadata has no bodies), once per request (RequestReceived omitted).
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
`

const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

func up(args []string) error {
	flags := flag.NewFlagSet("up", flag.ContinueOnError)
	dirFlag := flags.String("dir", "", "state directory (default: a new temporary directory, removed at stop)")
	untilStdinEOF := flags.Bool("until-stdin-eof", false, "stop when standard input reaches its end")
	readyTimeout := flags.Duration("ready-timeout", 3*time.Minute, "how long the control plane may take to become ready")
	if err := flags.Parse(args); err != nil {
		return err
	}

	dir := *dirFlag
	removeDir := dir == ""
	if removeDir {
		made, err := os.MkdirTemp("", "crabglamp-testenv-")
		if err != nil {
			return fmt.Errorf("making the state directory: %w", err)
		}
		dir = made
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("making %s: %w", dir, err)
	}

	plane := &controlPlane{dir: dir}
	err := plane.run(*readyTimeout, *untilStdinEOF)
	plane.stop()
	if removeDir {
		if rmErr := os.RemoveAll(dir); rmErr != nil && err == nil {
			err = fmt.Errorf("removing %s: %w", dir, rmErr)
		}
	}
	return err
}

type controlPlane struct {
	dir        string
	etcd       *embed.Etcd
	components []*component
}

type component struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has exited; err is set before
	err  error
}

func (p *controlPlane) run(readyTimeout time.Duration, untilStdinEOF bool) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClientPort, etcdPeerPort, apiPort := ports[0], ports[1], ports[2]

	files, err := p.writeFiles(apiPort)
	if err != nil {
		return err
	}
	if err := p.startEtcd(etcdClientPort, etcdPeerPort); err != nil {
		return err
	}

	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program: %w", err)
	}
	apiserver, err := p.start(self, "kube-apiserver", []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdClientPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler refuses a loopback address, and nothing here runs in a Pod
		// that would reach the API server through the kubernetes Service.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(p.dir, "apiserver-certs"),
		"--tls-cert-file=" + files.serverCert,
		"--tls-private-key-file=" + files.serverKey,
		"--client-ca-file=" + files.ca,
		"--service-account-key-file=" + files.saKey,
		"--service-account-signing-key-file=" + files.saKey,
		"--service-account-issuer=" + serviceAccountIssuer,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=Node,RBAC",
		"--audit-policy-file=" + files.auditPolicy,
		"--audit-log-path=" + files.auditLog,
		"--audit-log-mode=blocking",
		"--profiling=false",
	})
	if err != nil {
		return err
	}

	client, err := adminHTTPClient(files)
	if err != nil {
		return err
	}
	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	deadline := time.Now().Add(readyTimeout)
	if err := waitFor(deadline, apiserver, func() bool { return getOK(client, server+"/readyz") }); err != nil {
		return fmt.Errorf("kube-apiserver never became ready: %w", err)
	}

	controllerManager, err := p.start(self, "kube-controller-manager", []string{
		"--kubeconfig=" + files.controllerManagerKubeconfig,
		"--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller",
		"--service-account-private-key-file=" + files.saKey,
		"--root-ca-file=" + files.ca,
		"--leader-elect=false",
		// Each controller as its own ServiceAccount with its bootstrap role, as kubeadm runs it:
		// the controller manager's own user may not, for one, empty a namespace.
		"--use-service-account-credentials=true",
		"--secure-port=0",
		"--profiling=false",
	})
	if err != nil {
		return err
	}
	// Pods are admitted only once their namespace's default ServiceAccount exists, which the
	// service-account controller makes: its appearance shows the controllers are working.
	if err := waitFor(deadline, controllerManager, func() bool {
		return getOK(client, server+"/api/v1/namespaces/default/serviceaccounts/default")
	}); err != nil {
		return fmt.Errorf("kube-controller-manager never made the default ServiceAccount: %w", err)
	}

	ready, err := json.Marshal(readyLine{
		Server:     server,
		Kubeconfig: files.adminKubeconfig,
		CAFile:     files.ca,
		AuditLog:   files.auditLog,
		Dir:        p.dir,
	})
	if err != nil {
		return fmt.Errorf("encoding the ready line: %w", err)
	}
	fmt.Println(string(ready))

	return p.wait(untilStdinEOF)
}

// wait blocks until something asks the control plane to stop; a component that exits on its own
// is an error (the tests would otherwise wait on a server that is gone).
func (p *controlPlane) wait(untilStdinEOF bool) error {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	stdinClosed := make(chan struct{})
	if untilStdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(stdinClosed)
		}()
	}
	died := make(chan error, len(p.components))
	for _, c := range p.components {
		go func(c *component) {
			<-c.done
			died <- fmt.Errorf("%s exited (%v); its log ends:\n%s", c.name, c.err, tail(c.log, 30))
		}(c)
	}
	select {
	case <-signals:
		return nil
	case <-stdinClosed:
		return nil
	case err := <-died:
		return err
	}
}

func (p *controlPlane) start(self, name string, args []string) (*component, error) {
	logPath := filepath.Join(p.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", logPath, err)
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A control plane whose orchestrator was killed must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &component{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	p.components = append(p.components, c)
	return c, nil
}

// stop ends the components in reverse order of start (the controller manager before the API
// server it talks to), then etcd; each gets a grace period before it is killed.
func (p *controlPlane) stop() {
	for i := len(p.components) - 1; i >= 0; i-- {
		c := p.components[i]
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
		}
	}
	if p.etcd != nil {
		p.etcd.Close()
	}
}

func (p *controlPlane) startEtcd(clientPort, peerPort int) error {
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(p.dir, "etcd")
	cfg.Name = "testenv"
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(p.dir, "etcd.log")}
	// Tests throw the data away: no fsync per write.
	cfg.UnsafeNoFsync = true
	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	p.etcd = etcd
	select {
	case <-etcd.Server.ReadyNotify():
		return nil
	case err := <-etcd.Err():
		return fmt.Errorf("etcd failed: %w", err)
	case <-time.After(time.Minute):
		return errors.New("etcd was not ready within a minute")
	}
}

type planeFiles struct {
	ca, serverCert, serverKey, saKey, auditPolicy, auditLog string
	adminCert, adminKey                                     []byte
	adminKubeconfig, controllerManagerKubeconfig            string
}

func (p *controlPlane) writeFiles(apiPort int) (planeFiles, error) {
	var files planeFiles
	ca, err := newAuthority()
	if err != nil {
		return files, err
	}
	serving, err := ca.issue(2, pkix.Name{CommonName: "kube-apiserver"}, true,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")})
	if err != nil {
		return files, err
	}
	admin, err := ca.issue(3, pkix.Name{CommonName: "testenv-admin", Organization: []string{"system:masters"}}, false, nil, nil)
	if err != nil {
		return files, err
	}
	controllerManager, err := ca.issue(4, pkix.Name{CommonName: "system:kube-controller-manager"}, false, nil, nil)
	if err != nil {
		return files, err
	}
	saKey, err := serviceAccountKey()
	if err != nil {
		return files, err
	}
	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	steps := []struct {
		target *string
		name   string
		data   []byte
	}{
		{&files.ca, "ca.crt", ca.pem},
		{&files.serverCert, "apiserver.crt", serving.certPEM},
		{&files.serverKey, "apiserver.key", serving.keyPEM},
		{&files.saKey, "service-account.key", saKey},
		{&files.auditPolicy, "audit-policy.yaml", []byte(auditPolicy)},
		{&files.adminKubeconfig, "admin.kubeconfig", kubeconfig(server, ca.pem, "testenv-admin", admin)},
		{&files.controllerManagerKubeconfig, "kube-controller-manager.kubeconfig", kubeconfig(server, ca.pem, "kube-controller-manager", controllerManager)},
	}
	for _, step := range steps {
		path, err := writeSecret(p.dir, step.name, step.data)
		if err != nil {
			return files, err
		}
		*step.target = path
	}
	files.auditLog = filepath.Join(p.dir, "audit.log")
	files.adminCert, files.adminKey = admin.certPEM, admin.keyPEM
	return files, nil
}

func kubeconfig(server string, caPEM []byte, user string, pair keyPair) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: testenv
  context: {cluster: testenv, user: %s, namespace: default}
current-context: testenv
`, server, b64(caPEM), user, b64(pair.certPEM), b64(pair.keyPEM), user))
}

func adminHTTPClient(files planeFiles) (*http.Client, error) {
	pair, err := tls.X509KeyPair(files.adminCert, files.adminKey)
	if err != nil {
		return nil, fmt.Errorf("loading the admin certificate: %w", err)
	}
	caPEM, err := os.ReadFile(files.ca)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", files.ca, err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}}},
	}, nil
}

func getOK(client *http.Client, target string) bool {
	resp, err := client.Get(target)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// waitFor polls until ready() holds, the deadline passes, or the component exits.
func waitFor(deadline time.Time, c *component, ready func() bool) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited (%v); its log ends:\n%s", c.name, c.err, tail(c.log, 30))
		case <-ctx.Done():
			return fmt.Errorf("deadline passed; %s's log ends:\n%s", c.name, tail(c.log, 30))
		case <-ticker.C:
		}
	}
}

// freePorts asks the kernel for loopback ports that are free now. Another process could take
// one before the component binds it; a start that fails that way reports it, and is rare.
func freePorts(n int) ([]int, error) {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free loopback port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	var kept []string
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64*1024), 1024*1024)
	for scanner.Scan() {
		kept = append(kept, scanner.Text())
		if len(kept) > lines {
			kept = kept[1:]
		}
	}
	return strings.Join(kept, "\n")
}

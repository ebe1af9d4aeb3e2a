// Command testenv is a real Kubernetes control plane for the operator's tests: an embedded etcd,
// kube-apiserver and kube-controller-manager, built from Kubernetes' own Go modules, on loopback,
// with all state in one temporary directory that it removes when it stops.
//
// It never listens beyond 127.0.0.1 and never downloads anything at run time. It is one binary
// with three entry points: `up` (the default) runs etcd in-process and starts itself twice more
// as `kube-apiserver` and `kube-controller-manager`, each the unchanged upstream command, in its
// own process: both components keep process-wide state (feature gates, metrics registries, a
// signal handler that may be installed only once), so two of them cannot share one process.
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	kubeapiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kubecontrollermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	role := "up"
	args := os.Args[1:]
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		role, args = args[0], args[1:]
	}
	switch role {
	case "kube-apiserver":
		cmd := kubeapiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := kubecontrollermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "up":
		if err := up(args); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "testenv: unknown command %q (up | kube-apiserver | kube-controller-manager)\n", role)
		os.Exit(2)
	}
}

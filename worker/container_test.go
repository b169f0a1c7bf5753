package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The image holds the binary, the job configs and the encrypted spec —
// no plaintext spec, no key, no test data — and runs as user 5642.
// Both Dockerfiles: the one make image builds from a staged context and
// the multi-stage one for machines with a registry.
func TestDockerfileShipsNoSecrets(t *testing.T) {
	for _, name := range []string{"Dockerfile", "Dockerfile.multistage"} {
		t.Run(name, func(t *testing.T) { dockerfileShipsNoSecrets(t, name) })
	}
}

func dockerfileShipsNoSecrets(t *testing.T, name string) {
	f, err := os.Open(filepath.Join("..", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var final []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "FROM ") {
			final = []string{line}
			continue
		}
		if line != "" && !strings.HasPrefix(line, "#") {
			final = append(final, line)
		}
	}
	if final[0] != "FROM scratch" {
		t.Fatalf("final stage is %q, want an empty base", final[0])
	}
	allowed := map[string]bool{"--from=build /out/flarego": true, "flarego": true, "job/pneumonia/config": true, "job/pneumonia/custom/network.json.enc": true}
	var user, entry bool
	for _, l := range final[1:] {
		switch {
		case strings.HasPrefix(l, "COPY "):
			src := strings.Join(strings.Fields(l)[1:len(strings.Fields(l))-1], " ")
			if !allowed[src] {
				t.Errorf("the image copies %q", src)
			}
		case strings.HasPrefix(l, "ADD "), strings.HasPrefix(l, "RUN "):
			t.Errorf("final stage runs %q", l)
		case l == "USER 5642:5642":
			user = true
		case strings.HasPrefix(l, `ENTRYPOINT ["/flarego", "unseal"`):
			entry = true
		}
	}
	if !user || !entry {
		t.Errorf("USER 5642 %v, unseal entrypoint %v", user, entry)
	}
	// What the job folder would contribute: configs and *.enc only.
	filepath.WalkDir(filepath.Join("..", "job", "pneumonia", "config"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), "config_fed_") {
			t.Errorf("job config folder holds %s", p)
		}
		return nil
	})
}

// The static binary runs in an empty root: no libc, no /etc, no /tmp.
func TestBinaryRunsInEmptyRoot(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "flarego")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	os.MkdirAll(filepath.Join(root, "work"), 0o777)
	os.WriteFile(filepath.Join(root, "work", "msg"), []byte("secret weights"), 0o644)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("/flarego", args...)
		cmd.Env = []string{} // nothing from the host
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		if os.Getuid() != 0 {
			// Unprivileged: a user namespace grants chroot.
			cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER
			cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
			cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("flarego %v in an empty root: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("help")
	run("keygen", "/work/k")
	run("encrypt", "/work/msg", "/work/k", "/work/msg.enc")
	run("decrypt", "/work/msg.enc", "/work/k", "/work/back")
	if b, _ := os.ReadFile(filepath.Join(root, "work", "back")); string(b) != "secret weights" {
		t.Fatalf("round trip in the empty root gave %q", b)
	}
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if e.Name() != "flarego" && e.Name() != "work" {
			t.Errorf("the run created /%s", e.Name())
		}
	}
}

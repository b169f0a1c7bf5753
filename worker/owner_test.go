package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/flarego/flarego/persistor"
)

// A federated run whose server holds only the owner's recipient: the
// server (its own process, the FCP credentials file holding the job's
// Fernet key and the recipient) saves the global model as an age file;
// nothing in its workspace, credentials, output, environment or memory
// opens that file; the owner's identity does, another identity does not.
func TestFederatedRunServerCannotReadOwnersModel(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the command and runs a federated job")
	}
	bin := buildFlarego(t)
	dir := t.TempDir()
	td, _ := filepath.Abs(filepath.Join("..", "testdata"))
	keyText, err := os.ReadFile(filepath.Join(td, "fernet", "key.txt"))
	if err != nil {
		t.Fatal(err)
	}
	siteKey := filepath.Join(dir, "site.key")
	os.WriteFile(siteKey, keyText, 0o600)
	job := writeJob(t, dir, siteKey)

	owner, _ := persistor.GenerateIdentity()
	other, _ := persistor.GenerateIdentity()
	secret := owner.String()

	cred := filepath.Join(dir, "server-credentials")
	os.MkdirAll(cred, 0o700)
	params, _ := json.Marshal(map[string]any{"key": strings.TrimSpace(string(keyText)), "recipients": []string{owner.Recipient().String()}})
	os.WriteFile(filepath.Join(cred, "secret_run_params.json"), params, 0o600)

	target := freeAddr(t)
	ws := filepath.Join(dir, "server")
	os.MkdirAll(filepath.Join(ws, "startup"), 0o755)
	os.WriteFile(filepath.Join(ws, "startup", "fed_server.json"), []byte(fmt.Sprintf(`{"format_version": 2, "servers": [{"name": "example_project",
 "service": {"target": %q}, "admin_host": "127.0.0.1", "admin_port": 0, "heart_beat_timeout": 600}]}`, target)), 0o644)
	clientKit := fmt.Sprintf(`{"format_version": 2, "servers": [{"name": "example_project", "service": {"target": %q}}], "client": {"retry_timeout": 20}}`, target)
	output := filepath.Join(dir, "output")
	os.MkdirAll(output, 0o755)

	srv := exec.Command(bin, "server", "-m", ws, "-s", "fed_server.json", "--job", job, "--output", output,
		"--set", "wait_time_after_min_received=0", "--set", "num_rounds=3")
	srv.Env = append(os.Environ(), "FLAREGO_SERVER_CREDENTIALS="+cred, "FLAREGO_INPUT="+filepath.Join(dir, "none"))
	pipe, _ := srv.StdoutPipe()
	srv.Stderr = srv.Stdout
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()

	// The server's memory and environment, searched while it runs: once
	// a round has saved the model, it is stopped, read and let go on.
	var log bytes.Buffer
	scanned := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		once := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "round 1/3 done") {
				once = true
				scanned <- searchProcess(srv.Process.Pid, secret, cred)
			}
		}
		if !once {
			scanned <- fmt.Errorf("the server never finished round 1")
		}
	}()

	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 2)
	rcs := make([]int, 2)
	for i := range 2 {
		site := filepath.Join(dir, fmt.Sprintf("site-%d", i+1))
		os.MkdirAll(filepath.Join(site, "startup"), 0o755)
		os.WriteFile(filepath.Join(site, "startup", "fed_client.json"), []byte(clientKit), 0o644)
		run([]string{"samples", "--n", "2", "--seed", fmt.Sprint(i + 1), filepath.Join(site, "input")}, io.Discard, io.Discard)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rcs[i] = run([]string{"client", "-m", site, "-s", "fed_client.json", "--job", job, "--key-file", siteKey,
				"--input", filepath.Join(site, "input"), "--set", fmt.Sprintf("uid=site-%d", i+1)}, &outs[i], &outs[i])
		}()
	}
	select {
	case err := <-scanned:
		if err != nil {
			t.Fatalf("server process: %v\n%s", err, log.String())
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("no round done in 3 minutes:\n%s", log.String())
	}
	wg.Wait()
	waited := make(chan error, 1)
	go func() { waited <- srv.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("server: %v\n%s", err, log.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("server did not end:\n%s", log.String())
	}
	for i, rc := range rcs {
		if rc != 0 {
			t.Fatalf("site-%d exited %d:\n%s", i+1, rc, outs[i].String())
		}
	}
	if !strings.Contains(log.String(), "encrypted to 1 owner recipient(s) (age); this server cannot read them back") ||
		!strings.Contains(log.String(), "round 3/3 done") {
		t.Fatalf("server log:\n%s", log.String())
	}

	model := filepath.Join(output, "model_parameters.pt.enc")
	if ok, err := persistor.IsAgeFile(model); err != nil || !ok {
		t.Fatalf("%s is not an age file: %v", model, err)
	}
	// Every file the server had: no identity in it, and no key in it
	// (raw, or as the "key" of a JSON file) opens the model.
	var files int
	for _, root := range []string{ws, cred, output} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			files++
			b, _ := os.ReadFile(p)
			if bytes.Contains(bytes.ToUpper(b), []byte(secret)) {
				t.Errorf("%s holds the owner's identity", p)
			}
			var candidates []string
			candidates = append(candidates, strings.TrimSpace(string(b)))
			var m map[string]any
			if json.Unmarshal(b, &m) == nil {
				for _, v := range m {
					if s, ok := v.(string); ok {
						candidates = append(candidates, s)
					}
				}
			}
			for _, c := range candidates {
				if k, err := persistor.ParseKey(c); err == nil {
					if _, err := persistor.ReadCheckpointFile(model, k); err == nil {
						t.Errorf("the key in %s opens the owner's model", p)
					}
				}
				if ids, err := age.ParseIdentities(strings.NewReader(c)); err == nil {
					if _, err := persistor.ReadCheckpointFileWith(model, nil, ids); err == nil {
						t.Errorf("an identity in %s opens the owner's model", p)
					}
				}
			}
			return nil
		})
	}
	t.Logf("searched %d files of the server, its environment and memory: no key that opens the model", files)

	ck, err := persistor.ReadCheckpointFileWith(model, nil, []age.Identity{owner})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ck.Model.Names()); n != 18 {
		t.Fatalf("owner's model has %d tensors, want 18", n)
	}
	otherKey := filepath.Join(dir, "other.key")
	os.WriteFile(otherKey, []byte(persistor.IdentityFile(other, time.Now())), 0o600)
	var out bytes.Buffer
	plain := filepath.Join(dir, "plain.pt")
	if rc := run([]string{"decrypt", "--identity", otherKey, model, plain}, &out, &out); rc != 1 || !strings.Contains(out.String(), "wrong owner key") {
		t.Fatalf("decrypt with another identity: exit %d: %s", rc, out.String())
	}
	if _, err := os.Stat(plain); err == nil {
		t.Fatal("a failed decrypt wrote a file")
	}
}

// searchProcess stops pid, looks for secret (as written and in lower
// case) in its environment and every readable mapping of its memory, and
// lets it go on. control is a string the process holds (so the search is
// seen to find what is there).
func searchProcess(pid int, secret, control string) error {
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	needles := [][]byte{[]byte(secret), []byte(strings.ToLower(secret))}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return err
	}
	for _, n := range needles {
		if bytes.Contains(env, n) {
			return fmt.Errorf("the environment holds the owner's identity")
		}
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return err
	}
	defer mem.Close()
	var read int64
	seen := false
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || b <= a || b-a > 4<<30 {
			continue
		}
		buf := make([]byte, b-a)
		n, _ := mem.ReadAt(buf, int64(a))
		read += int64(n)
		for _, nd := range needles {
			if bytes.Contains(buf[:n], nd) {
				return fmt.Errorf("memory at %s holds the owner's identity", f[0])
			}
		}
		seen = seen || bytes.Contains(buf[:n], []byte(control))
	}
	if read < 1<<20 || !seen {
		return fmt.Errorf("the memory search read %d bytes and did not find %q, which the server holds", read, control)
	}
	return nil
}

package fcp

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeKit writes a startup kit's start.sh and sub_start.sh in the shape
// NVFlare's provisioning gives them (2.8: $WORKSPACE, 2.0: $DIR/..).
func writeKit(t *testing.T, dir, line string) string {
	t.Helper()
	startup := filepath.Join(dir, "startup")
	os.MkdirAll(startup, 0o755)
	sub := "#!/usr/bin/env bash\n" +
		`DIR="$( cd "$( dirname "${BASH_SOURCE[0]}" )" >/dev/null 2>&1 && pwd )"` + "\n" +
		"# start the site\n" + line + "\n"
	os.WriteFile(filepath.Join(startup, "sub_start.sh"), []byte(sub), 0o755)
	os.WriteFile(filepath.Join(startup, "start.sh"), []byte("#!/usr/bin/env bash\n$DIR/sub_start.sh &\n"), 0o755)
	return startup
}

func TestCommand(t *testing.T) {
	dir := t.TempDir()
	kit28 := filepath.Join(dir, "site-1")
	s28 := writeKit(t, kit28, `    python3 -u -m nvflare.private.fed.app.client.client_train -m "$WORKSPACE" -s fed_client.json --set secure_train=true uid=site-1 org=nvidia config_folder=config`)
	kit20 := filepath.Join(dir, "server")
	s20 := writeKit(t, kit20, `python3 -u -m nvflare.private.fed.app.server.server_train -m $DIR/.. -s fed_server.json --set secure_train=true config_folder=config &`)
	t.Setenv("NVFL_WORKSPACE", "")
	cases := []struct {
		argv []string
		want []string
	}{
		{[]string{"/flarego", "client", "-m", "/ws"}, []string{"client", "-m", "/ws"}},
		{[]string{"flarego", "help"}, []string{"help"}},
		{[]string{"python3", "-u", "-m", ClientTrainModule, "-m", "/workspace", "-s", "fed_client.json", "--set", "uid=site-1", "secure_train=true"},
			[]string{"client", "-m", "/workspace", "-s", "fed_client.json", "--set", "uid=site-1", "secure_train=true"}},
		{[]string{"/usr/bin/python", "-W", "ignore", "-m", ServerTrainModule, "-m", "/ws", "-s", "fed_server.json"},
			[]string{"server", "-m", "/ws", "-s", "fed_server.json"}},
		{[]string{"python3", "infer.py", "/input/model_parameters.pt.enc"}, []string{"infer", "/input/model_parameters.pt.enc"}},
		{[]string{"python", "/app/custom/train.py", "--epochs", "2"}, []string{"train", "--epochs", "2"}},
		{[]string{"/bin/bash", "-c", `python -u -m nvflare.private.fed.app.client.client_train -m /workspace -s fed_client.json --set uid=site-2 secure_train=true config_folder=config org="my org"`},
			[]string{"client", "-m", "/workspace", "-s", "fed_client.json", "--set", "uid=site-2", "secure_train=true", "config_folder=config", "org=my org"}},
		{[]string{filepath.Join(s28, "start.sh")},
			[]string{"client", "-m", kit28, "-s", "fed_client.json", "--set", "secure_train=true", "uid=site-1", "org=nvidia", "config_folder=config"}},
		{[]string{"bash", filepath.Join(s20, "sub_start.sh")},
			[]string{"server", "-m", kit20, "-s", "fed_server.json", "--set", "secure_train=true", "config_folder=config"}},
	}
	for _, c := range cases {
		got, err := Command(c.argv)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("Command(%q) = %q, %v; want %q", c.argv, got, err, c.want)
		}
	}
	t.Setenv("NVFL_WORKSPACE", "/vault/ws")
	got, err := Command([]string{filepath.Join(s28, "start.sh")})
	if err != nil || got[2] != "/vault/ws" {
		t.Errorf("with $NVFL_WORKSPACE: %q, %v", got, err)
	}
}

// Anything else is refused naming the command and what the image runs.
func TestCommandRefused(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "nokit", "startup"), 0o755)
	os.WriteFile(filepath.Join(dir, "nokit", "startup", "sub_start.sh"), []byte("#!/bin/sh\necho $HOME\n"), 0o755)
	os.MkdirAll(filepath.Join(dir, "big", "startup"), 0o755)
	os.WriteFile(filepath.Join(dir, "big", "startup", "sub_start.sh"), make([]byte, maxKitScript+1), 0o755)
	os.MkdirAll(filepath.Join(dir, "var", "startup"), 0o755)
	os.WriteFile(filepath.Join(dir, "var", "startup", "sub_start.sh"), []byte("python3 -m "+ClientTrainModule+" -m $OTHER -s fed_client.json\n"), 0o755)
	for _, c := range []struct {
		argv []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"ls", "/"}, `command "ls /": not a command this image runs`},
		{[]string{"python3", "-m", "http.server"}, "module http.server is not one this image runs"},
		{[]string{"python3", "serve.py"}, "script serve.py is not one this image runs"},
		{[]string{"python3", "-c", "print(1)"}, "python option -c is not understood"},
		{[]string{"python3"}, "python with no module or script"},
		{[]string{"sh", "-c", `python3 "infer.py`}, "unterminated"},
		{[]string{"bash"}, "a shell with no script"},
		{[]string{"sh", "-c", "sh -c 'sh -c \"sh -c \\\"sh -c flarego\\\"\"'"}, "nest too deep"},
		{[]string{filepath.Join(dir, "missing", "startup", "start.sh")}, "starting the kit of"},
		{[]string{filepath.Join(dir, "nokit", "startup", "start.sh")}, "no line runs"},
		{[]string{filepath.Join(dir, "big", "startup", "start.sh")}, "not a kit's script"},
		{[]string{filepath.Join(dir, "var", "startup", "start.sh")}, "a variable this image does not know"},
	} {
		_, err := Command(c.argv)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Command(%q): %v; want an error with %q", c.argv, err, c.want)
		}
		if err != nil && len(c.argv) > 0 && !strings.Contains(err.Error(), "this image runs flarego COMMAND") && !strings.Contains(err.Error(), "startup") && !strings.Contains(err.Error(), "nest too deep") {
			t.Errorf("Command(%q): %v does not say what the image runs", c.argv, err)
		}
	}
}

func FuzzSplitWords(f *testing.F) {
	f.Add(`python -u -m x --set a="b c" 'd e' f\ g`)
	f.Add(`"unterminated`)
	f.Fuzz(func(t *testing.T, s string) {
		words, err := splitWords(s)
		if err != nil {
			return
		}
		for _, w := range words {
			if len(w) > len(s) {
				t.Fatalf("word %q longer than the line", w)
			}
		}
	})
}

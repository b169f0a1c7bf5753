package fcp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/flarego/flarego/persistor"
)

// The modules NVFlare's kits start a site or a server with (NVFlare 2.0
// to 2.8: python3 -u -m MODULE -m WORKSPACE -s fed_*.json --set k=v ...).
const (
	ClientTrainModule = "nvflare.private.fed.app.client.client_train"
	ServerTrainModule = "nvflare.private.fed.app.server.server_train"
)

// maxKitScript bounds a kit script read to find its command line.
const maxKitScript = 64 << 10

// Command maps the command line a container is started with to flarego's
// arguments (without the program name), so that one image answers every
// FCP role:
//
//   - flarego's own: flarego COMMAND ... (or /flarego ...);
//   - NVFlare 2.0 to 2.8's: python3 [-u] -m nvflare.private.fed.app.client.client_train ...
//     and ...server.server_train ... (client and server take their flags);
//   - a startup kit's startup/start.sh or startup/sub_start.sh: the
//     python line of the kit's sub_start.sh, with $DIR and $WORKSPACE as
//     the kit sets them ($NVFL_WORKSPACE, else the kit folder);
//   - the seed's inference: python3 infer.py WEIGHTS ...;
//   - any of these behind bash -c "..." or sh -c "...", as NVFlare's
//     Docker templates write them.
//
// Anything else is an error that names the command and what is understood.
func Command(argv []string) ([]string, error) {
	return command(argv, 0)
}

func command(argv []string, depth int) ([]string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("no command given: %s", understood)
	}
	if depth > 4 {
		return nil, fmt.Errorf("command %q: scripts and shells nest too deep", strings.Join(argv, " "))
	}
	unknown := func(what string) error {
		return fmt.Errorf("command %q: %s; %s", strings.Join(argv, " "), what, understood)
	}
	base := filepath.Base(argv[0])
	switch {
	case base == "flarego":
		return argv[1:], nil
	case base == "bash" || base == "sh":
		if len(argv) >= 3 && argv[1] == "-c" {
			words, err := splitWords(argv[2])
			if err != nil {
				return nil, unknown(err.Error())
			}
			return command(words, depth+1)
		}
		if len(argv) >= 2 && !strings.HasPrefix(argv[1], "-") {
			return command(argv[1:], depth+1)
		}
		return nil, unknown("a shell with no script")
	case base == "start.sh" || base == "sub_start.sh":
		words, err := kitCommand(argv[0])
		if err != nil {
			return nil, err
		}
		return command(words, depth+1)
	case strings.HasPrefix(base, "python"):
		args := argv[1:]
		for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-m" {
			switch args[0] {
			case "-W", "-X":
				if len(args) < 2 {
					return nil, unknown(args[0] + " without its value")
				}
				args = args[1:]
			case "-u", "-B", "-O", "-OO", "-s", "-E", "-I", "-S", "-q":
			default:
				return nil, unknown("python option " + args[0] + " is not understood")
			}
			args = args[1:]
		}
		if len(args) == 0 {
			return nil, unknown("python with no module or script")
		}
		if args[0] == "-m" {
			if len(args) < 2 {
				return nil, unknown("python -m with no module")
			}
			switch args[1] {
			case ClientTrainModule:
				return append([]string{"client"}, args[2:]...), nil
			case ServerTrainModule:
				return append([]string{"server"}, args[2:]...), nil
			}
			return nil, unknown("module " + args[1] + " is not one this image runs")
		}
		switch filepath.Base(args[0]) {
		case "infer.py":
			return append([]string{"infer"}, args[1:]...), nil
		case "train.py":
			return append([]string{"train"}, args[1:]...), nil
		}
		return nil, unknown("script " + args[0] + " is not one this image runs")
	}
	return nil, unknown("not a command this image runs")
}

const understood = "this image runs flarego COMMAND, python3 -m " + ClientTrainModule + " or " + ServerTrainModule +
	" (NVFlare's kit flags), a kit's startup/start.sh or startup/sub_start.sh, python3 infer.py WEIGHTS or python3 train.py"

// kitCommand reads the python command line of the kit whose start.sh or
// sub_start.sh is script: the first line of startup/sub_start.sh that
// runs one of NVFlare's train modules, its variables replaced.
func kitCommand(script string) ([]string, error) {
	startup, err := filepath.Abs(filepath.Dir(script))
	if err != nil {
		return nil, err
	}
	sub := filepath.Join(startup, "sub_start.sh")
	f, err := persistor.OpenRegular(sub)
	if err != nil {
		return nil, fmt.Errorf("starting the kit of %s: %w", script, err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if n, err := buf.ReadFrom(io.LimitReader(f, maxKitScript+1)); err != nil {
		return nil, fmt.Errorf("reading %s: %w", sub, err)
	} else if n > maxKitScript {
		return nil, fmt.Errorf("%s: over %d KiB, not a kit's script", sub, maxKitScript>>10)
	}
	kit := filepath.Dir(startup)
	ws := os.Getenv("NVFL_WORKSPACE")
	if ws == "" {
		ws = kit
	}
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || !(strings.Contains(line, ClientTrainModule) || strings.Contains(line, ServerTrainModule)) {
			continue
		}
		line = strings.NewReplacer(`"$WORKSPACE"`, ws, `"${WORKSPACE}"`, ws, "${WORKSPACE}", ws, "$WORKSPACE", ws,
			`"$DIR/.."`, kit, "$DIR/..", kit, `"$DIR"`, startup, "${DIR}", startup, "$DIR", startup).Replace(line)
		if i := strings.IndexAny(line, "&|;>"); i >= 0 {
			line = line[:i] // "python3 ... &" or "... 2>&1": the command itself
		}
		words, err := splitWords(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", sub, err)
		}
		if strings.Contains(strings.Join(words, " "), "$") {
			return nil, fmt.Errorf("%s: the command line uses a variable this image does not know: %s", sub, line)
		}
		return words, nil
	}
	return nil, fmt.Errorf("%s: no line runs %s or %s", sub, ClientTrainModule, ServerTrainModule)
}

// splitWords splits a command line as a shell would for the simple lines
// kits and FCP use: words separated by blanks, '…' and "…" quoting,
// backslash escapes outside single quotes. No expansion.
func splitWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	in := false // a word has started (so "" is a word)
	var quote byte
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote == '\'':
			if ch == '\'' {
				quote = 0
			} else {
				w.WriteByte(ch)
			}
		case quote == '"':
			switch {
			case ch == '"':
				quote = 0
			case ch == '\\' && i+1 < len(s) && strings.IndexByte(`"\$`+"`", s[i+1]) >= 0:
				i++
				w.WriteByte(s[i])
			default:
				w.WriteByte(ch)
			}
		case ch == '\'' || ch == '"':
			quote, in = ch, true
		case ch == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			in = true
		case ch == ' ' || ch == '\t' || ch == '\n':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteByte(ch)
			in = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if in {
		words = append(words, w.String())
	}
	return words, nil
}

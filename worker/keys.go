package main

import (
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/persistor"
)

func (c *command) keygen(args []string) error {
	fs := c.flags("keygen", "[-f] [--age] KEYFILE")
	force := fs.Bool("f", false, "overwrite an existing key file (anything it encrypted becomes unreadable)")
	ageID := fs.Bool("age", false, "write an age identity (the model owner's secret key) and print its recipient, as age-keygen does")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	if *ageID {
		return c.keygenAge(name, *force)
	}
	if _, err := os.Lstat(name); err == nil && !*force {
		return fmt.Errorf("%s already exists; losing a key loses everything it encrypted (use -f to overwrite)", name)
	}
	k, err := persistor.GenerateKey()
	if err != nil {
		return err
	}
	if err := persistor.WriteFileAtomic(name, 0o600, func(w io.Writer) error {
		_, err := io.WriteString(w, k.Encode())
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote a new key to %s\n", name)
	return nil
}

func (c *command) encrypt(args []string) error {
	fs := c.flags("encrypt", "IN KEYFILE OUT | --recipient R... IN OUT")
	var recips listFlag
	fs.Var(&recips, "recipient", "encrypt to this age recipient (age1…, or a recipients file) instead of a Fernet key; repeatable")
	if len(recipientArgs(args)) > 0 {
		pos, err := parse(fs, args, 2, 2)
		if err != nil {
			return err
		}
		return c.encryptAge(recips, pos)
	}
	in, k, out, err := inKeyOut(fs, args)
	if err != nil {
		return err
	}
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return err
	} else if st.IsDir() {
		return fmt.Errorf("%s is a directory", in)
	}
	if err := persistor.WriteEncrypted(out, k, func(w io.Writer) error {
		_, err := io.Copy(w, f)
		if err != nil {
			return fmt.Errorf("reading %s: %w", in, err)
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "encrypted %s -> %s\n", in, out)
	return nil
}

// inKeyOut parses IN KEYFILE OUT and loads the key.
func inKeyOut(fs *flag.FlagSet, args []string) (in string, k *persistor.Key, out string, err error) {
	pos, err := parse(fs, args, 3, 3)
	if err != nil {
		return "", nil, "", err
	}
	k, err = persistor.ReadKeyFile(pos[1])
	return pos[0], k, pos[2], err
}

func (c *command) decrypt(args []string) error {
	fs := c.flags("decrypt", "[--ttl DURATION] IN KEYFILE OUT | --identity FILE IN OUT")
	ttl := fs.Duration("ttl", persistor.NoTTL, "refuse tokens older than this, or signed over 60s in the future (default: no age check)")
	identity := fs.String("identity", "", "open an age file with this identity (flarego keygen --age, or age-keygen)")
	if len(identityArgs(args)) > 0 {
		pos, err := parse(fs, args, 2, 2)
		if err != nil {
			return err
		}
		return c.decryptAge(*identity, pos)
	}
	in, k, out, err := inKeyOut(fs, args)
	if err != nil {
		return err
	}
	if *ttl < 0 {
		*ttl = persistor.NoTTL
	}
	plain, err := persistor.DecryptFile(in, *ttl, k)
	if err != nil {
		return err
	}
	return c.writePlain(in, out, plain)
}

// unseal is the container entrypoint step. The seed decrypted every *.enc
// to disk for the whole run; flarego reads encrypted files itself, so by
// default unseal only proves that every file opens with the FCP key (failing
// before a long job starts), and writes plaintext only when asked (--write),
// for third-party tools that need it.
func (c *command) unseal(args []string) error {
	fl := c.flags("unseal", "[--write] [--input DIR] [--server-credentials DIR] [DIR] [-- CMD ARGS...]")
	loc := fcp.Default()
	write := fl.Bool("write", false, "also write each decrypted file next to it without .enc (mode 0600), as the seed did")
	fl.StringVar(&loc.Input, "input", loc.Input, "FCP input directory (client key: INPUT/secret_run_params.json)")
	fl.StringVar(&loc.ServerCredentials, "server-credentials", loc.ServerCredentials, "FCP server credentials directory (used first when it exists)")
	var cmd []string
	for i, a := range args {
		if a == "--" {
			args, cmd = args[:i], args[i+1:]
			break
		}
	}
	pos, err := parse(fl, args, 0, -1)
	if err != nil {
		return err
	}
	dir := "."
	if len(pos) > 1 {
		return fmt.Errorf("%w: more than one directory given", errUsage)
	}
	if len(pos) == 1 {
		dir = pos[0]
	}
	var files []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".enc") {
			return nil
		}
		// Only regular files (or links to them), refused before any is
		// decrypted: a named pipe would block the entrypoint.
		f, err := persistor.OpenRegular(path)
		if err != nil {
			return err
		}
		f.Close()
		files = append(files, path)
		return nil
	})
	if err != nil {
		return err
	}
	if len(files) > 0 {
		k, err := loc.KeyFile()
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stderr, "key: %s\n", loc.KeyPath())
		for _, f := range files {
			plain, err := persistor.DecryptFile(f, persistor.NoTTL, k)
			if err != nil {
				return err
			}
			if !*write {
				fmt.Fprintf(c.stderr, "ok %s (%d bytes, kept encrypted)\n", f, len(plain))
				continue
			}
			out := strings.TrimSuffix(f, ".enc")
			if err := persistor.WriteFileAtomic(out, 0o600, func(w io.Writer) error {
				_, err := w.Write(plain)
				return err
			}); err != nil {
				return err
			}
			fmt.Fprintf(c.stderr, "decrypted %s -> %s (%d bytes)\n", f, out, len(plain))
		}
	} else {
		fmt.Fprintf(c.stderr, "no *.enc files under %s\n", dir)
	}
	if len(cmd) == 0 {
		return nil
	}
	// The command lines FCP and NVFlare's kits start a container with run
	// the matching flarego role; anything else runs as given when it is
	// there (outside the image: a third-party tool), else is refused
	// naming the command.
	args, cerr := fcp.Command(cmd)
	if cerr != nil {
		path, err := exec.LookPath(cmd[0])
		if err != nil {
			return cerr
		}
		return syscall.Exec(path, cmd, os.Environ())
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if filepath.Base(cmd[0]) != "flarego" {
		fmt.Fprintf(c.stderr, "running flarego %s (for %s)\n", strings.Join(args, " "), strings.Join(cmd, " "))
	}
	return syscall.Exec(self, append([]string{"flarego"}, args...), os.Environ())
}

// writePlain writes what was decrypted from in to out, atomically and mode
// 0600, and says so.
func (c *command) writePlain(in, out string, plain []byte) error {
	if err := persistor.WriteFileAtomic(out, 0o600, func(w io.Writer) error {
		_, err := w.Write(plain)
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "decrypted %s -> %s (%d bytes, mode 0600)\n", in, out, len(plain))
	return nil
}

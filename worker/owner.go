package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/flarego/flarego/persistor"
)

// Owner keys (age): the model owner keeps an identity; servers and
// trainers get only its recipient (the public key) and write models
// nobody else can read.

// keygenAge writes a new age identity to name (mode 0600), as age-keygen
// -o does, and prints its recipient on stdout.
func (c *command) keygenAge(name string, force bool) error {
	if _, err := os.Lstat(name); err == nil && !force {
		return fmt.Errorf("%s already exists; losing an identity loses every model encrypted to it (use -f to overwrite)", name)
	}
	id, err := persistor.GenerateIdentity()
	if err != nil {
		return err
	}
	if err := persistor.WriteFileAtomic(name, 0o600, func(w io.Writer) error {
		_, err := io.WriteString(w, persistor.IdentityFile(id, time.Now()))
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote a new age identity to %s; its recipient (public key, give it to the server):\n", name)
	fmt.Fprintln(c.stdout, id.Recipient())
	return nil
}

// parseRecipientFlags turns --recipient values into recipients: an age1…
// key as given, anything else a recipients file.
func parseRecipientFlags(list []string) ([]age.Recipient, error) {
	var out []age.Recipient
	for _, s := range list {
		if strings.HasPrefix(strings.TrimSpace(s), "age1") {
			rs, err := persistor.ParseRecipients("--recipient", []string{s})
			if err != nil {
				return nil, err
			}
			out = append(out, rs...)
			continue
		}
		rs, err := persistor.ReadRecipientsFile(s)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// rotate re-encrypts sealed files in place, as MultiFernet.rotate does:
// each is opened with an old key (or identity) and written again, atomically,
// under the new key (keeping a Fernet token's timestamp) or to the new
// recipients. Every file is checked to open before any is rewritten, so a
// wrong old key changes nothing.
func (c *command) rotate(args []string) error {
	fs := c.flags("rotate", "FILE... (--old KEYFILE | --identity FILE)... (--new KEYFILE | --recipient R...)")
	var olds, idFiles, recips listFlag
	fs.Var(&olds, "old", "a Fernet key file the files are encrypted with now (repeatable)")
	fs.Var(&idFiles, "identity", "an age identity file the files are encrypted to now (repeatable)")
	newKey := fs.String("new", "", "the Fernet key file to encrypt with from now on")
	fs.Var(&recips, "recipient", "an age recipient (age1…, or a recipients file) to encrypt to from now on (repeatable)")
	files, err := parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	if (*newKey == "") == (len(recips) == 0) {
		return fmt.Errorf("%w: give the new key: --new KEYFILE or --recipient R (one kind)", errUsage)
	}
	if len(olds)+len(idFiles) == 0 && *newKey == "" {
		return fmt.Errorf("%w: give what opens the files now: --old KEYFILE or --identity FILE", errUsage)
	}
	var to persistor.Sealing
	var keys []*persistor.Key
	for _, name := range olds {
		k, err := persistor.ReadKeyFile(name)
		if err != nil {
			return err
		}
		keys = append(keys, k)
	}
	var ids []age.Identity
	for _, name := range idFiles {
		is, err := persistor.ReadIdentityFile(name)
		if err != nil {
			return err
		}
		ids = append(ids, is...)
	}
	if *newKey != "" {
		if to.Key, err = persistor.ReadKeyFile(*newKey); err != nil {
			return err
		}
	} else if to.Recipients, err = parseRecipientFlags(recips); err != nil {
		return err
	}
	for _, f := range files {
		if err := persistor.CheckOpens(f, keys, ids, to); err != nil {
			return fmt.Errorf("%w (no file was changed)", err)
		}
	}
	for _, f := range files {
		if err := persistor.RotateFile(f, keys, ids, to); err != nil {
			return err
		}
		fmt.Fprintf(c.stderr, "rotated %s (%s)\n", f, to)
	}
	return nil
}

// decryptAge is decrypt --identity: IN OUT.
func (c *command) decryptAge(idFile string, pos []string) error {
	if len(pos) != 2 {
		return fmt.Errorf("%w: with --identity: decrypt --identity FILE IN OUT", errUsage)
	}
	ids, err := persistor.ReadIdentityFile(idFile)
	if err != nil {
		return err
	}
	in, out := pos[0], pos[1]
	if isAge, err := persistor.IsAgeFile(in); err != nil {
		return err
	} else if !isAge {
		return fmt.Errorf("%s is not an age file (a Fernet token takes decrypt IN KEYFILE OUT)", in)
	}
	plain, err := persistor.ReadSealedUpTo(in, nil, ids, 64<<30, "an encrypted file")
	if err != nil {
		return err
	}
	return c.writePlain(in, out, plain)
}

// encryptAge is encrypt --recipient: IN OUT, an age file.
func (c *command) encryptAge(recips []string, pos []string) error {
	if len(pos) != 2 {
		return fmt.Errorf("%w: with --recipient: encrypt --recipient R IN OUT", errUsage)
	}
	rs, err := parseRecipientFlags(recips)
	if err != nil {
		return err
	}
	in, out := pos[0], pos[1]
	f, err := persistor.OpenRegular(in)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := persistor.WriteAgeFile(out, rs, func(w io.Writer) error {
		if _, err := io.Copy(w, f); err != nil {
			return fmt.Errorf("reading %s: %w", in, err)
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "encrypted %s -> %s (age, %d recipient(s))\n", in, out, len(rs))
	return nil
}

// recipientArgs and identityArgs tell whether a command line asks for age
// (--recipient, --identity) before it is parsed, since the positional
// arguments differ.
func recipientArgs(args []string) []string { return flagArgs(args, "recipient") }
func identityArgs(args []string) []string  { return flagArgs(args, "identity") }

func flagArgs(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if a == "--" {
			break
		}
		for _, p := range []string{"-" + name, "--" + name} {
			if a == p || strings.HasPrefix(a, p+"=") {
				out = append(out, a)
			}
		}
	}
	return out
}

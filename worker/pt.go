package main

import (
	"fmt"
	"strings"

	"filippo.io/age"
	"github.com/flarego/flarego/fcp"
	"github.com/flarego/flarego/persistor"
	"github.com/flarego/flarego/persistor/pickle"
)

func (c *command) pt(args []string) error {
	if len(args) == 0 || args[0] != "inspect" {
		return fmt.Errorf("%w: want 'pt inspect FILE [--key-file K]'", errUsage)
	}
	fs := c.flags("pt inspect", "FILE [--key-file K | --identity ID]")
	keyFile := fs.String("key-file", "", "key for an encrypted FILE (default: the FCP secret_run_params.json)")
	identity := fs.String("identity", "", "age identity for a FILE encrypted to its owner")
	pos, err := parse(fs, args[1:], 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	var k *persistor.Key
	encrypted, err := persistor.IsTokenFile(name)
	if err != nil {
		return err
	}
	if encrypted {
		if *keyFile != "" {
			k, err = persistor.ReadKeyFile(*keyFile)
		} else {
			k, err = fcp.Default().KeyFile()
			if err != nil {
				err = fmt.Errorf("%s is encrypted: pass --key-file (%w)", name, err)
			}
		}
		if err != nil {
			return err
		}
	}
	var ids []age.Identity
	if *identity != "" {
		if ids, err = persistor.ReadIdentityFile(*identity); err != nil {
			return err
		}
	}
	data, err := persistor.ReadSealedUpTo(name, k, ids, 64<<30, "a model file")
	if err != nil {
		return err
	}
	isAge, _ := persistor.IsAgeFile(name)
	v, err := persistor.DecodePT(data)
	if err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	w := c.stdout
	state := "plain"
	if encrypted {
		state = "encrypted (Fernet), decrypted in memory"
	} else if isAge {
		state = "encrypted to its owner (age), decrypted in memory"
	}
	fmt.Fprintf(w, "file: %s (%s)\n", name, state)
	if ck, err := persistor.CheckpointOf(v); err == nil {
		if ck.Bare {
			fmt.Fprintf(w, "layout: state dict\n")
		} else {
			fmt.Fprintf(w, "layout: NVFlare checkpoint\n")
			if ck.TrainConf != nil {
				fmt.Fprintf(w, "train_conf: %s\n", describe(ck.TrainConf))
			}
			if ck.MetaProps != nil {
				fmt.Fprintf(w, "meta_props: %s\n", describe(ck.MetaProps))
			}
		}
		var total int64
		for _, n := range ck.Model.Names() {
			t := ck.Model.Get(n)
			total += int64(len(t.Data))
			fmt.Fprintf(w, "%-28s %-8s %s\n", n, t.DType, shape(t.Shape))
		}
		fmt.Fprintf(w, "%d tensors, %d bytes\n", ck.Model.Len(), total)
		return nil
	}
	// Anything else: walk it and list the tensors by path.
	n := 0
	walk(v, "", func(path string, t *persistor.Tensor) {
		n++
		fmt.Fprintf(w, "%-28s %-8s %s\n", path, t.DType, shape(t.Shape))
	})
	fmt.Fprintf(w, "layout: %s holding %d tensors\n", pickle.TypeName(v), n)
	return nil
}

func shape(s []int) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func describe(v any) string {
	switch v := v.(type) {
	case *pickle.Dict:
		return describeItems(v.Items)
	case *pickle.OrderedDict:
		return describeItems(v.Items)
	case string:
		return fmt.Sprintf("%q", v)
	case nil:
		return "None"
	}
	return fmt.Sprint(v)
}

func describeItems(items []pickle.Item) string {
	parts := make([]string, len(items))
	for i, it := range items {
		parts[i] = describe(it.Key) + ": " + describe(it.Value)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func walk(v any, path string, f func(string, *persistor.Tensor)) {
	join := func(k any) string {
		if path == "" {
			return fmt.Sprint(k)
		}
		return fmt.Sprintf("%s.%v", path, k)
	}
	switch v := v.(type) {
	case *persistor.Tensor:
		f(path, v)
	case *pickle.Dict:
		for _, it := range v.Items {
			walk(it.Value, join(it.Key), f)
		}
	case *pickle.OrderedDict:
		for _, it := range v.Items {
			walk(it.Value, join(it.Key), f)
		}
	case pickle.Tuple:
		for i, x := range v {
			walk(x, join(i), f)
		}
	case pickle.List:
		for i, x := range v {
			walk(x, join(i), f)
		}
	}
}

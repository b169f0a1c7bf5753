package persistor

import (
	"fmt"
	"os"
	"path/filepath"
)

// Locations are the FCP container's well-known directories. Tests and
// non-container runs move them with flags or with the environment variables
// FLAREGO_INPUT, FLAREGO_OUTPUT and FLAREGO_SERVER_CREDENTIALS.
type Locations struct {
	Input             string // "/input": site data and, on clients, the key
	Output            string // "/output": results
	ServerCredentials string // "/server-credentials": the server's key
}

// SecretParams is the file name FCP gives the run's secrets.
const SecretParams = "secret_run_params.json"

// DefaultLocations returns the FCP paths, moved by the environment.
func DefaultLocations() Locations {
	get := func(env, def string) string {
		if v := os.Getenv(env); v != "" {
			return v
		}
		return def
	}
	return Locations{
		Input:             get("FLAREGO_INPUT", "/input"),
		Output:            get("FLAREGO_OUTPUT", "/output"),
		ServerCredentials: get("FLAREGO_SERVER_CREDENTIALS", "/server-credentials"),
	}
}

// KeyPath is where the seed looks for the key: the server credentials
// directory when it exists, else the input directory.
func (l Locations) KeyPath() string {
	if st, err := os.Stat(l.ServerCredentials); err == nil && st.IsDir() {
		return filepath.Join(l.ServerCredentials, SecretParams)
	}
	return filepath.Join(l.Input, SecretParams)
}

// KeyFile loads the key from KeyPath. A missing file is an error that wraps
// ErrNoKey and names the path tried.
func (l Locations) KeyFile() (*Key, error) {
	k, err := ReadKeyFile(l.KeyPath())
	if err != nil {
		return nil, fmt.Errorf("%w (FCP lookup: %s if that directory exists, else %s)", err,
			filepath.Join(l.ServerCredentials, SecretParams), filepath.Join(l.Input, SecretParams))
	}
	return k, nil
}

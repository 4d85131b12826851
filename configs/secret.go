package configs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxSecretSize bounds a secret file; a password longer than this is
// certainly the wrong file.
const maxSecretSize = 64 << 10

// ReadSecretFile reads a secret (a master or service password) from the file
// that a *_file key names, and removes one trailing newline ("\n" or
// "\r\n"), so that files written by echo or an editor work. The secret is
// never part of an error; an empty file is an error.
func ReadSecretFile(path string) (string, error) {
	if path == "" {
		return "", errors.New("configs: read secret file: no file named; set the *_file key in the configuration")
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("configs: read secret file %s: %w (create it with the password on one line, mode 0600, readable by passgate)", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretSize+1))
	if err != nil {
		return "", fmt.Errorf("configs: read secret file %s: %w", path, err)
	}
	if len(data) > maxSecretSize {
		return "", fmt.Errorf("configs: read secret file %s: larger than %d bytes; is it the right file?", path, maxSecretSize)
	}
	s := strings.TrimSuffix(string(data), "\n")
	s = strings.TrimSuffix(s, "\r")
	if s == "" {
		return "", fmt.Errorf("configs: read secret file %s: the file is empty; write the password into it", path)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("configs: read secret file %s: more than one line; keep only the password", path)
	}
	return s, nil
}

// Command interop follows a fedcredit ledger through its C2SP tlog-tiles HTTP
// interface using only golang.org/x/mod/sumdb/{note,tlog}: code the project did
// not write. It verifies the served checkpoint with the log's vkey, reads every
// entry bundle and checks each entry's record hash against the authenticated
// level-0 hashes, proves one entry's inclusion and the consistency of an older
// checkpoint with the served one. It prints one JSON line and exits 0, or
// prints the failure and exits 1.
//
// The checkpoint and hash tiles are public: they are read without a client
// certificate (as a witness or monitor would). Entry bundles are served only to
// an auditor's certificate: with <ca.pem> <cert.pem> <key.pem> the program
// trusts the deployment's CA for the server and presents that certificate (and
// only then) when it reads a bundle.
//
// usage: interop <base-url> <vkey> <old-checkpoint-file> <index> [<ca.pem> <cert.pem> <key.pem>]
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const height = 8 // c2sp.org/tlog-tiles fixes tile height 8

type httpTiles struct {
	base    string
	public  *http.Client // no client certificate: checkpoint and hash tiles
	auditor *http.Client // presents the auditor's certificate: entry bundles
	fetched int
}

// clients builds the public client (trusting caFile when given) and the auditor
// client, which also presents certFile/keyFile; without files both are
// http.DefaultClient (plaintext or the system's roots, no certificate).
func clients(caFile, certFile, keyFile string) (*http.Client, *http.Client, error) {
	if caFile == "" {
		return http.DefaultClient, http.DefaultClient, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("client certificate: %w", err)
	}
	public := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	auditor := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: roots, Certificates: []tls.Certificate{pair},
	}}}
	return public, auditor, nil
}

// c2spPath maps Go's sumdb tile path (tile/H/L/N, tile/H/data/N) to the C2SP one
// (tile/L/N, tile/entries/N); both encode N the same way.
func c2spPath(t tlog.Tile) string {
	p := strings.TrimPrefix(t.Path(), fmt.Sprintf("tile/%d/", height))
	if strings.HasPrefix(p, "data/") {
		p = "entries/" + strings.TrimPrefix(p, "data/")
	}
	return "tile/" + p
}

func (h *httpTiles) get(path string) ([]byte, error) {
	client := h.public
	if strings.HasPrefix(path, "tile/entries/") {
		client = h.auditor
	}
	resp, err := client.Get(h.base + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	h.fetched++
	return body, nil
}

func (h *httpTiles) Height() int { return height }

func (h *httpTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := h.get(c2spPath(t))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (h *httpTiles) SaveTiles([]tlog.Tile, [][]byte) {}

// openCheckpoint verifies a signed note with the log key and parses the
// c2sp.org/tlog-checkpoint body: origin, size, base64 root hash.
func openCheckpoint(msg []byte, verifiers note.Verifiers, origin string) (tlog.Tree, error) {
	n, err := note.Open(msg, verifiers)
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("note.Open: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != origin {
		return tlog.Tree{}, fmt.Errorf("checkpoint origin: expected %q, got %q", origin, lines[0])
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("checkpoint size: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		return tlog.Tree{}, fmt.Errorf("checkpoint root hash %q is not 32 bytes of base64", lines[2])
	}
	var root tlog.Hash
	copy(root[:], raw)
	return tlog.Tree{N: size, Hash: root}, nil
}

func splitBundle(data []byte) ([][]byte, error) {
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, fmt.Errorf("bundle ends inside a length prefix")
		}
		n := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+n {
			return nil, fmt.Errorf("bundle entry declares %d bytes, %d remain", n, len(data)-2)
		}
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	return out, nil
}

func run(base, vkey, oldPath string, index int64, tlsFiles []string) (map[string]any, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("vkey: %w", err)
	}
	verifiers := note.VerifierList(v)
	files := append(tlsFiles, "", "", "")
	public, auditor, err := clients(files[0], files[1], files[2])
	if err != nil {
		return nil, err
	}
	tiles := &httpTiles{base: strings.TrimSuffix(base, "/") + "/", public: public, auditor: auditor}
	cpBytes, err := tiles.get("checkpoint")
	if err != nil {
		return nil, err
	}
	tree, err := openCheckpoint(cpBytes, verifiers, v.Name())
	if err != nil {
		return nil, fmt.Errorf("served checkpoint: %w", err)
	}
	oldBytes, err := os.ReadFile(oldPath)
	if err != nil {
		return nil, err
	}
	old, err := openCheckpoint(oldBytes, verifiers, v.Name())
	if err != nil {
		return nil, fmt.Errorf("old checkpoint: %w", err)
	}
	hr := tlog.TileHashReader(tree, tiles)
	// every entry: the bundle's record hashes must be the authenticated level-0 hashes
	for start := int64(0); start < tree.N; start += 1 << height {
		t := tlog.Tile{H: height, L: -1, N: start >> height, W: 1 << height}
		if rest := tree.N - start; rest < 1<<height {
			t.W = int(rest)
		}
		data, err := tiles.get(c2spPath(t))
		if err != nil {
			return nil, err
		}
		entries, err := splitBundle(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c2spPath(t), err)
		}
		if len(entries) != t.W {
			return nil, fmt.Errorf("%s holds %d entries, expected %d", c2spPath(t), len(entries), t.W)
		}
		idx := make([]int64, t.W)
		for i := range idx {
			idx[i] = tlog.StoredHashIndex(0, start+int64(i))
		}
		hashes, err := hr.ReadHashes(idx)
		if err != nil {
			return nil, fmt.Errorf("level-0 hashes at %d: %w", start, err)
		}
		for i, e := range entries {
			if tlog.RecordHash(e) != hashes[i] {
				return nil, fmt.Errorf("entry %d: record hash differs from the tree's leaf hash", start+int64(i))
			}
		}
		if start <= index && index < start+int64(t.W) {
			rp, err := tlog.ProveRecord(tree.N, index, hr)
			if err != nil {
				return nil, fmt.Errorf("ProveRecord(%d, %d): %w", tree.N, index, err)
			}
			if err := tlog.CheckRecord(rp, tree.N, tree.Hash, index, tlog.RecordHash(entries[index-start])); err != nil {
				return nil, fmt.Errorf("CheckRecord: %w", err)
			}
		}
	}
	tp, err := tlog.ProveTree(tree.N, old.N, hr)
	if err != nil {
		return nil, fmt.Errorf("ProveTree(%d, %d): %w", tree.N, old.N, err)
	}
	if err := tlog.CheckTree(tp, tree.N, tree.Hash, old.N, old.Hash); err != nil {
		return nil, fmt.Errorf("CheckTree: %w", err)
	}
	return map[string]any{
		"origin": v.Name(), "size": tree.N, "old_size": old.N, "index": index,
		"root": tree.Hash.String(), "requests": tiles.fetched,
	}, nil
}

func main() {
	if len(os.Args) != 5 && len(os.Args) != 8 {
		fmt.Fprintln(os.Stderr, "usage: interop <base-url> <vkey> <old-checkpoint-file> <index> [<ca.pem> <cert.pem> <key.pem>]")
		os.Exit(2)
	}
	index, err := strconv.ParseInt(os.Args[4], 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "index:", err)
		os.Exit(2)
	}
	out, err := run(os.Args[1], os.Args[2], os.Args[3], index, os.Args[5:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

package admin_test

import (
	"context"
	"encoding/xml"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// node is an element of a rendered page, enough of a DOM for the table
// checks below.
type node struct {
	name     string
	attr     map[string]string
	children []*node
	text     strings.Builder // all text inside, children's too
}

// elements returns the elements named name under n, in document order.
func (n *node) elements(name string) []*node {
	var out []*node
	for _, c := range n.children {
		if c.name == name {
			out = append(out, c)
		}
		out = append(out, c.elements(name)...)
	}
	return out
}

// parseTables parses every <table> of an HTML page rendered by the
// templates (encoding/xml in its HTML mode is enough for them).
func parseTables(t *testing.T, page string) []*node {
	t.Helper()
	var tables []*node
	for rest := page; ; {
		i := strings.Index(rest, "<table")
		if i < 0 {
			return tables
		}
		j := strings.Index(rest[i:], "</table>")
		if j < 0 {
			t.Fatalf("a table is not closed:\n%s", rest[i:])
		}
		frag := rest[i : i+j+len("</table>")]
		rest = rest[i+j:]
		d := xml.NewDecoder(strings.NewReader(frag))
		d.Strict, d.AutoClose, d.Entity = false, xml.HTMLAutoClose, xml.HTMLEntity
		root := &node{}
		stack := []*node{root}
		for {
			tok, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("parse table: %v\n%s", err, frag)
			}
			switch tok := tok.(type) {
			case xml.StartElement:
				n := &node{name: tok.Name.Local, attr: map[string]string{}}
				for _, a := range tok.Attr {
					n.attr[a.Name.Local] = a.Value
				}
				top := stack[len(stack)-1]
				top.children = append(top.children, n)
				stack = append(stack, n)
			case xml.EndElement:
				stack = stack[:len(stack)-1]
			case xml.CharData:
				for _, n := range stack {
					n.text.Write(tok)
				}
			}
		}
		tables = append(tables, root.children[0])
	}
}

// stampRE is a date and time as the pages show it.
var stampRE = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d UTC`)

// TestTablesLabelled: every table of the admin pages can show its rows as
// labelled blocks at phone width: it is of class cards, every element
// carries its table role (kept when the stylesheet changes its display),
// every data cell names its column in data-label exactly as the header
// does, and every date and time is one <time> element (never broken over
// lines) with a machine-readable datetime.
func TestTablesLabelled(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.makeAdmin(ctx, "alice")
	if _, err := e.st.AddUser(ctx, "carol", store.MFAEnabled); err != nil {
		t.Fatal(err)
	}
	ap, _, err := e.st.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "Outlook 2010"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.TouchAppPassword(ctx, ap.ID, store.Usage{At: time.Now(), Addr: "192.0.2.9:5555", Proto: "imap", Client: "Outlook"}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.Record(ctx, store.AuditEvent{Time: time.Now(), Action: "login", Subject: "carol", Outcome: "success",
		Protocol: "imap", ClientAddr: "192.0.2.7", ClientPort: 4321, TLS: true, Credential: store.CredentialPrimary,
		Reason: "primary password accepted; would be refused once enforced", ClientName: "Thunderbird"}); err != nil {
		t.Fatal(err)
	}
	roles := map[string]string{"table": "table", "thead": "rowgroup", "tbody": "rowgroup", "tr": "row", "td": "cell"}
	for _, tc := range []struct {
		name, path string
		minTimes   int // dates and times the page must show in its table
	}{
		{"users", "/admin/users", 0},
		{"mfa", "/admin/mfa", 0},
		{"user", "/admin/users/alice", 2},
		{"rollout", "/admin/rollout", 1},
		{"audit", "/admin/audit", 1},
		{"empty/audit", "/admin/audit?user=nobody", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tables := parseTables(t, e.mustGet(tc.path))
			if len(tables) != 1 {
				t.Fatalf("%d tables, want 1", len(tables))
			}
			tab := tables[0]
			if !slices.Contains(strings.Fields(tab.attr["class"]), "cards") {
				t.Errorf("the table is not of class cards: %q", tab.attr["class"])
			}
			for el, role := range roles {
				for _, n := range append(tab.elements(el), tab) {
					if n.name == el && n.attr["role"] != role {
						t.Errorf("<%s> has role %q, want %q", el, n.attr["role"], role)
					}
				}
			}
			var header []string
			for _, th := range tab.elements("thead")[0].elements("th") {
				if th.attr["scope"] != "col" || th.attr["role"] != "columnheader" {
					t.Errorf("header cell %q: scope %q, role %q; want col, columnheader", th.text.String(), th.attr["scope"], th.attr["role"])
				}
				header = append(header, strings.TrimSpace(th.text.String()))
			}
			rows := tab.elements("tbody")[0].elements("tr")
			if len(rows) == 0 {
				t.Fatal("no rows")
			}
			for _, tr := range rows {
				cells := tr.children
				if len(cells) == 1 && cells[0].attr["colspan"] != "" {
					continue // "No events." and the like
				}
				if len(cells) != len(header) {
					t.Errorf("a row of %d cells under %d headers", len(cells), len(header))
					continue
				}
				for i, c := range cells {
					switch {
					case c.name == "th":
						if c.attr["scope"] != "row" || c.attr["role"] != "rowheader" {
							t.Errorf("row header %q: scope %q, role %q; want row, rowheader", c.text.String(), c.attr["scope"], c.attr["role"])
						}
					case c.attr["class"] == "tick": // the checkbox, labelled by the row's name
					case c.attr["data-label"] != header[i]:
						t.Errorf("cell %q under %q has data-label %q", c.text.String(), header[i], c.attr["data-label"])
					}
				}
			}
			times := tab.elements("time")
			for _, tm := range times {
				at, err := time.Parse(time.RFC3339, tm.attr["datetime"])
				if got := tm.text.String(); err != nil || at.Format("2006-01-02 15:04 UTC") != got {
					t.Errorf("<time datetime=%q>%s</time> (%v)", tm.attr["datetime"], got, err)
				}
			}
			if stamps := stampRE.FindAllString(tab.text.String(), -1); len(stamps) != len(times) || len(times) < tc.minTimes {
				t.Errorf("%d dates and times, %d in <time> elements; want all, and at least %d", len(stamps), len(times), tc.minTimes)
			}
		})
	}
}

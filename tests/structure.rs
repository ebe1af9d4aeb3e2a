//! The shape of the source tree, checked on every test run: no file of the operator over 600
//! lines, no function over 100 lines, and no import circle among the files of `src/` or
//! `sandbox/src/` (a file that names another file's items, through `use` or a path in code,
//! depends on it; a parent declaring `mod child;` does not).
//!
//! The files are parsed with `syn`, so a path inside a string, a comment or a doc never counts
//! and a function's length is its real extent. Paths inside macro calls (`select!`, `info!`)
//! are read from their tokens. What still breaks a rule is listed in [`KNOWN`]: the list can
//! only shrink, since a new break fails the test and so does a listed one that is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::spanned::Spanned;
use syn::visit::Visit;

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 100;

/// Breaks of the rules that predate them, each to be removed with its fix. A data table
/// exempt from the length rules belongs here too, with the word "table" in its line.
const KNOWN: &[&str] = &[];

/// A crate's files by module path (`["controllers", "agent"]` for `src/controllers/agent.rs`).
struct CrateFiles {
    /// The directory of `lib.rs`, relative to the repository.
    src: &'static str,
    modules: BTreeMap<Vec<String>, PathBuf>,
}

impl CrateFiles {
    fn read(root: &Path, src: &'static str) -> Self {
        let mut modules = BTreeMap::new();
        let mut pending = vec![root.join(src)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(root.join(src)).expect("under src").to_path_buf();
                    if let Some(module) = module_path(&rel) {
                        modules.insert(module, rel);
                    }
                }
            }
        }
        CrateFiles { src, modules }
    }

    /// The file of the deepest module named by `path` (module segments first), if any.
    fn file_of(&self, path: &[String]) -> Option<&PathBuf> {
        (0..=path.len()).rev().find_map(|n| self.modules.get(&path[..n]))
    }

    fn name(&self, module: &[String]) -> String {
        format!("{}/{}", self.src, self.modules[module].display())
    }
}

/// `lib.rs` is the root, `a/mod.rs` and `a.rs` are `a`, `a/b.rs` is `a::b`; `main.rs` is a
/// crate of its own that reaches the library by its name, so it takes part in no circle.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop()?;
    match file.as_str() {
        "main.rs" if parts.is_empty() => None,
        "lib.rs" if parts.is_empty() => Some(parts),
        "mod.rs" => Some(parts),
        _ => {
            parts.push(file.trim_end_matches(".rs").to_owned());
            Some(parts)
        }
    }
}

/// What one file refers to, and how long its functions are.
struct FileScan<'a> {
    files: &'a CrateFiles,
    module: Vec<String>,
    /// Inline modules (`mod tests { .. }`) entered so far: `super` leaves them first.
    inline_depth: usize,
    uses: BTreeSet<Vec<String>>,
    long_functions: Vec<(String, usize)>,
}

impl FileScan<'_> {
    /// Resolves a path as written in this file to the module path it starts with.
    fn note(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else { return };
        let mut at = self.module.clone();
        let mut inline = self.inline_depth;
        let mut rest = segments;
        match first.as_str() {
            "crate" => {
                at.clear();
                rest = &segments[1..];
            }
            "self" | "super" => {
                while let Some(seg) = rest.first() {
                    match seg.as_str() {
                        "self" => {}
                        "super" if inline > 0 => inline -= 1,
                        "super" => {
                            at.pop();
                        }
                        _ => break,
                    }
                    rest = &rest[1..];
                }
            }
            // A child module named without `self::` (`use child::Item;`, `child::f()`): only
            // from the file itself, not from an inline module inside it.
            name if inline == 0 && self.files.modules.contains_key(&[at.as_slice(), &[name.to_owned()]].concat()) => {}
            _ => return,
        }
        at.extend(rest.iter().cloned());
        self.uses.insert(at);
    }

    fn function(&mut self, name: &syn::Ident, sig: &syn::Signature, body: &syn::Block) {
        let lines = body.brace_token.span.close().end().line + 1 - sig.span().start().line;
        if lines > MAX_FN_LINES {
            self.long_functions.push((name.to_string(), lines));
        }
    }

    /// Paths in a macro's tokens: `a::b::c` runs of identifiers.
    fn tokens(&mut self, tokens: TokenStream) {
        let mut run: Vec<String> = Vec::new();
        let mut colons = 0;
        for tree in tokens {
            match tree {
                TokenTree::Ident(ident) if run.is_empty() || colons == 2 => {
                    run.push(ident.to_string());
                    colons = 0;
                }
                TokenTree::Punct(p) if p.as_char() == ':' && !run.is_empty() && colons < 2 => colons += 1,
                other => {
                    self.flush_run(&mut run);
                    colons = 0;
                    match other {
                        TokenTree::Group(group) => self.tokens(group.stream()),
                        TokenTree::Ident(ident) => run.push(ident.to_string()),
                        _ => {}
                    }
                }
            }
        }
        self.flush_run(&mut run);
    }

    fn flush_run(&mut self, run: &mut Vec<String>) {
        if run.len() > 1 {
            let path = std::mem::take(run);
            self.note(&path);
        }
        run.clear();
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.note(&[prefix.as_slice(), &[n.ident.to_string()]].concat()),
            syn::UseTree::Rename(r) => self.note(&[prefix.as_slice(), &[r.ident.to_string()]].concat()),
            syn::UseTree::Glob(_) => self.note(prefix),
            syn::UseTree::Group(g) => g.items.iter().for_each(|item| self.use_tree(prefix, item)),
        }
    }
}

impl<'ast> Visit<'ast> for FileScan<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.note(&segments);
        syn::visit::visit_path(self, path);
    }

    /// `pub(super)` and `pub(in crate::x)` name who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.inline_depth += 1;
            syn::visit::visit_item_mod(self, item);
            self.inline_depth -= 1;
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.function(&item.sig.ident, &item.sig, &item.block);
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.function(&item.sig.ident, &item.sig, &item.block);
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(body) = &item.default {
            self.function(&item.sig.ident, &item.sig, body);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

/// Every break of the rules in one crate, one line each, and the imports that make each circle.
fn breaks(root: &Path, src: &'static str, check_lengths: bool) -> (Vec<String>, Vec<String>) {
    let files = CrateFiles::read(root, src);
    let mut found = Vec::new();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, rel) in &files.modules {
        let path = root.join(src).join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut scan = FileScan {
            files: &files,
            module: module.clone(),
            inline_depth: 0,
            uses: BTreeSet::new(),
            long_functions: Vec::new(),
        };
        scan.visit_file(&syntax);
        let name = files.name(module);
        if check_lengths {
            let lines = text.lines().count();
            if lines > MAX_FILE_LINES {
                found.push(format!("file {name}: {lines} lines"));
            }
            for (function, lines) in scan.long_functions {
                found.push(format!("fn {name} {function}: {lines} lines"));
            }
        }
        let targets = scan.uses.iter().filter_map(|used| files.file_of(used)).filter_map(|file| {
            files.modules.iter().find(|(_, f)| *f == file).map(|(m, _)| m.clone()).filter(|m| m != module)
        });
        edges.entry(module.clone()).or_default().extend(targets);
    }
    let mut links = Vec::new();
    for circle in circles(&edges) {
        let names: Vec<String> = circle.iter().map(|m| files.name(m)).collect();
        found.push(format!("circle {}", names.join(" ")));
        for from in &circle {
            let inside = edges[from].iter().filter(|to| circle.contains(to));
            links.extend(inside.map(|to| format!("{} -> {}", files.name(from), files.name(to))));
        }
    }
    (found, links)
}

/// The strongly connected components of more than one file (Tarjan's algorithm), each sorted.
fn circles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct Walk<'a, N> {
        edges: &'a BTreeMap<N, BTreeSet<N>>,
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on_stack: BTreeSet<N>,
        found: Vec<Vec<N>>,
    }
    impl<N: Ord + Clone> Walk<'_, N> {
        fn visit(&mut self, node: &N) {
            let i = self.index.len();
            self.index.insert(node.clone(), i);
            self.low.insert(node.clone(), i);
            self.stack.push(node.clone());
            self.on_stack.insert(node.clone());
            for next in self.edges.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node.clone(), low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node.clone(), low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(&top);
                    let done = &top == node;
                    component.push(top);
                    if done {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}

#[test]
fn the_source_tree_keeps_its_shape() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The size rules are the operator's; the sandbox (a stand-in, with its CEL cost tables)
    // is held to no circles.
    let (mut found, mut links) = breaks(root, "src", true);
    let (sandbox, sandbox_links) = breaks(root, "sandbox/src", false);
    found.extend(sandbox);
    links.extend(sandbox_links);
    let known: BTreeSet<&str> = KNOWN.iter().copied().collect();
    let new: Vec<&String> = found.iter().filter(|b| !known.contains(b.as_str())).collect();
    let found_set: BTreeSet<&str> = found.iter().map(String::as_str).collect();
    let gone: Vec<&&str> = KNOWN.iter().filter(|k| !found_set.contains(**k)).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "the source tree's shape changed.\nnew breaks of its rules (fix them):\n  {}\n\
         listed breaks that are gone (remove them from KNOWN):\n  {}\n\
         the imports inside the circles:\n  {}",
        new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        gone.iter().map(|s| **s).collect::<Vec<_>>().join("\n  "),
        links.join("\n  "),
    );
}

#[test]
fn circles_are_found_and_trees_are_not() {
    let edges = |pairs: &[(u8, u8)]| {
        let mut map: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
        for (a, b) in pairs {
            map.entry(*a).or_default().insert(*b);
            map.entry(*b).or_default();
        }
        map
    };
    assert_eq!(circles(&edges(&[(1, 2), (2, 3), (1, 3)])), Vec::<Vec<u8>>::new());
    assert_eq!(circles(&edges(&[(1, 2), (2, 3), (3, 1), (3, 4)])), vec![vec![1, 2, 3]]);
    assert_eq!(circles(&edges(&[(1, 2), (2, 1), (3, 4), (4, 3)])), vec![vec![1, 2], vec![3, 4]]);
}

#[test]
fn a_child_module_named_without_self_is_a_dependency() {
    let mut modules = BTreeMap::new();
    for (m, f) in [(vec![], "lib.rs"), (vec!["a"], "a/mod.rs"), (vec!["a", "b"], "a/b.rs")] {
        modules.insert(m.into_iter().map(String::from).collect::<Vec<_>>(), PathBuf::from(f));
    }
    let files = CrateFiles { src: "src", modules };
    let scan = |module: &[&str], code: &str| {
        let mut scan = FileScan {
            files: &files,
            module: module.iter().map(|s| s.to_string()).collect(),
            inline_depth: 0,
            uses: BTreeSet::new(),
            long_functions: Vec::new(),
        };
        scan.visit_file(&syn::parse_file(code).expect("test code parses"));
        scan.uses.into_iter().filter_map(|u| files.file_of(&u).cloned()).collect::<BTreeSet<_>>()
    };
    let a_b: BTreeSet<PathBuf> = [PathBuf::from("a/b.rs")].into();
    let a: BTreeSet<PathBuf> = [PathBuf::from("a/mod.rs")].into();
    assert_eq!(scan(&["a"], "use b::Thing;"), a_b);
    assert_eq!(scan(&["a"], "fn f() { b::go(); }"), a_b);
    assert_eq!(scan(&["a"], "fn f() { tracing::info!(x = %crate::a::b::name()); }"), a_b);
    assert_eq!(scan(&["a", "b"], "use super::Item;"), a);
    assert_eq!(scan(&["a", "b"], "pub(super) fn f() {}"), BTreeSet::new());
    assert_eq!(scan(&["a", "b"], "mod tests { use super::*; }"), [PathBuf::from("a/b.rs")].into());
    assert_eq!(scan(&["a", "b"], "// crate::a::b\nconst S: &str = \"super::x\";"), BTreeSet::new());
}

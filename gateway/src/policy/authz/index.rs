//! Picks the rules worth trying for a request, so that long lists of exact paths or
//! principals cost a hash lookup instead of a scan.
//!
//! A rule whose every `to` operation lists only exact `paths` can only match a request whose
//! path is one of them; it is filed under each of those paths. Otherwise, a rule whose every
//! `from` source lists only exact `principals` is filed under each principal. Every other
//! rule is tried for every request. Candidates come out in rule order, so the first match is
//! the same as a plain scan would find.

use std::collections::HashMap;

use super::compile::CompiledRule;
use super::matcher::{Predicate, StrAttr};

#[derive(Debug, Default)]
pub(super) struct RuleIndex {
    by_path: HashMap<Box<[u8]>, Vec<usize>>,
    by_principal: HashMap<Box<[u8]>, Vec<usize>>,
    /// Rules that must be tried for every request.
    always: Vec<usize>,
}

impl RuleIndex {
    pub fn build(rules: &[CompiledRule]) -> Self {
        let mut index = Self::default();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(paths) = keys(&rule.to, StrAttr::Path) {
                file(&mut index.by_path, paths, i);
            } else if let Some(principals) = keys(&rule.from, StrAttr::Principal) {
                file(&mut index.by_principal, principals, i);
            } else {
                index.always.push(i);
            }
        }
        index
    }

    /// The indices of the rules that may match, ascending.
    pub fn candidates<'s>(&'s self, path: &str, principal: Option<&str>) -> Candidates<'s> {
        let by_path = self
            .by_path
            .get(path.as_bytes())
            .map_or(&[][..], Vec::as_slice);
        let by_principal = principal
            .and_then(|p| self.by_principal.get(p.as_bytes()))
            .map_or(&[][..], Vec::as_slice);
        Candidates {
            lists: [by_path, by_principal, &self.always],
        }
    }
}

/// The keys a rule can only match under: for every clause, the exact values its positive
/// test on `attr` allows. `None` when some clause does not constrain `attr` to exact values
/// (or there are no clauses: the rule matches any value).
fn keys(clauses: &[Vec<Predicate>], attr: StrAttr) -> Option<Vec<&[u8]>> {
    if clauses.is_empty() {
        return None;
    }
    let mut keys = Vec::new();
    for clause in clauses {
        keys.extend(clause.iter().find_map(|p| p.exact_keys(attr))?);
    }
    Some(keys)
}

fn file(map: &mut HashMap<Box<[u8]>, Vec<usize>>, keys: Vec<&[u8]>, rule: usize) {
    for key in keys {
        let rules = map.entry(key.into()).or_default();
        // Keys repeat across a rule's operations; rules arrive in order, so the last entry
        // is the only one that can be this rule.
        if rules.last() != Some(&rule) {
            rules.push(rule);
        }
    }
}

/// A merge of three ascending lists with no element in two of them.
pub(super) struct Candidates<'s> {
    lists: [&'s [usize]; 3],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let (which, &next) = self
            .lists
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.first().map(|v| (i, v)))
            .min_by_key(|&(_, v)| *v)?;
        self.lists[which] = &self.lists[which][1..];
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_merge_in_order() {
        let index = RuleIndex {
            by_path: HashMap::from([(b"/a".to_vec().into(), vec![0, 4])]),
            by_principal: HashMap::from([(b"p".to_vec().into(), vec![2, 5])]),
            always: vec![1, 3, 6],
        };
        let got: Vec<usize> = index.candidates("/a", Some("p")).collect();
        assert_eq!(got, [0, 1, 2, 3, 4, 5, 6]);
        let got: Vec<usize> = index.candidates("/b", Some("p")).collect();
        assert_eq!(got, [1, 2, 3, 5, 6]);
        let got: Vec<usize> = index.candidates("/a", None).collect();
        assert_eq!(got, [0, 1, 3, 4, 6]);
    }
}

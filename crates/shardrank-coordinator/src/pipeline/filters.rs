//! Filters: each a few lines, registered by name. They keep the candidates' order.

use super::{Candidate, Filter, Query};
use crate::users::UserStore;
use shardrank_core::lang;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Drops posts the request says the client has shown already.
pub struct Seen;

impl Filter for Seen {
    fn filter(&self, q: &Query, c: &mut Vec<Candidate>) -> Result<(), String> {
        if !q.seen.is_empty() {
            c.retain(|x| !q.seen.contains(&x.id));
        }
        Ok(())
    }
}

/// Drops posts by authors the user blocked or muted. (The shards drop them too; this
/// holds whatever a source or a shard does.)
pub struct BlockedMuted;

impl Filter for BlockedMuted {
    fn filter(&self, q: &Query, c: &mut Vec<Candidate>) -> Result<(), String> {
        let excluded = &q.user.excluded_authors;
        if !excluded.is_empty() {
            c.retain(|x| excluded.binary_search(&x.author).is_err());
        }
        Ok(())
    }
}

/// At most `max_per_author` posts of one author, the first ones in the current order.
pub struct AuthorDiversity {
    pub max_per_author: usize,
}

impl Filter for AuthorDiversity {
    fn filter(&self, _: &Query, c: &mut Vec<Candidate>) -> Result<(), String> {
        let mut per: HashMap<u64, usize> = HashMap::new();
        c.retain(|x| {
            let n = per.entry(x.author).or_default();
            *n += 1;
            *n <= self.max_per_author
        });
        Ok(())
    }
}

/// Spam: drops posts by authors that many users block or mute, the signal Twitter's own
/// spam rules weigh most: at least `min_reports` blocks and mutes, and at least
/// `max_report_rate` of them per follower (so a popular account is not spam for being
/// blocked by a small share of its audience). Read from the user store.
pub struct Spam {
    pub users: Arc<RwLock<UserStore>>,
    pub min_reports: u32,
    pub max_report_rate: f64,
}

impl Spam {
    fn is_spam(&self, users: &UserStore, author: u64) -> bool {
        let reports = users.reports(author);
        reports >= self.min_reports
            && reports as f64 >= self.max_report_rate * users.followers(author) as f64
    }
}

impl Filter for Spam {
    fn filter(&self, _: &Query, c: &mut Vec<Candidate>) -> Result<(), String> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        c.retain(|x| !self.is_spam(&users, x.author));
        Ok(())
    }
}

/// Keeps posts in the user's language, and posts of unknown language; a user of unknown
/// language keeps everything. Needs the light ranker's hydrated languages.
pub struct Language;

impl Filter for Language {
    fn filter(&self, q: &Query, c: &mut Vec<Candidate>) -> Result<(), String> {
        if q.user_lang == lang::UNKNOWN {
            return Ok(());
        }
        c.retain(|x| match x.lang {
            Some(l) => l == lang::UNKNOWN || l == q.user_lang,
            None => true,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_proto::trace::TraceContext;

    fn q() -> Query {
        Query {
            user_id: 1,
            user: Default::default(),
            user_lang: lang::parse("en").unwrap(),
            now_ms: 0,
            limit: 20,
            seen: [3u64].into_iter().collect(),
            deadline: tokio::time::Instant::now(),
            trace: TraceContext::new_root(),
            rank: None,
        }
    }

    fn c(id: u64, author: u64, l: &str) -> Candidate {
        let mut x = Candidate::new(id, author, "test", 0.0);
        x.lang = Some(lang::parse(l).unwrap());
        x
    }

    fn ids(v: &[Candidate]) -> Vec<u64> {
        v.iter().map(|x| x.id).collect()
    }

    #[test]
    fn each_filter_keeps_order_and_drops_what_it_names() {
        let all = vec![
            c(1, 10, "en"),
            c(2, 10, "ja"),
            c(3, 11, "en"),
            c(4, 10, ""),
            c(5, 12, "en"),
            c(6, 10, "en"),
        ];
        let mut q = q();
        let mut v = all.clone();
        Seen.filter(&q, &mut v).unwrap();
        assert_eq!(ids(&v), [1, 2, 4, 5, 6]);
        let mut v = all.clone();
        AuthorDiversity { max_per_author: 2 }
            .filter(&q, &mut v)
            .unwrap();
        assert_eq!(ids(&v), [1, 2, 3, 5]);
        let mut v = all.clone();
        Language.filter(&q, &mut v).unwrap();
        assert_eq!(ids(&v), [1, 3, 4, 5, 6]);
        q.user.excluded_authors = vec![10, 12];
        let mut v = all.clone();
        BlockedMuted.filter(&q, &mut v).unwrap();
        assert_eq!(ids(&v), [3]);
    }

    #[test]
    fn spam_drops_authors_reported_often_enough() {
        use shardrank_core::events::{Event, Social, SocialKind};
        let mut users = UserStore::default();
        for u in 0..3 {
            users.apply(&Event::Social(Social {
                kind: if u % 2 == 0 {
                    SocialKind::Block
                } else {
                    SocialKind::Mute
                },
                user_id: 100 + u,
                target_id: 10,
                timestamp: 0,
            }));
        }
        // Author 11 was reported as often, but 100 accounts follow it.
        for u in 0..103 {
            let kind = if u < 3 {
                SocialKind::Block
            } else {
                SocialKind::Follow
            };
            users.apply(&Event::Social(Social {
                kind,
                user_id: 200 + u,
                target_id: 11,
                timestamp: 0,
            }));
        }
        let users = Arc::new(RwLock::new(users));
        let spam = |min_reports, rate| Spam {
            users: users.clone(),
            min_reports,
            max_report_rate: rate,
        };
        let all = vec![c(1, 10, "en"), c(2, 11, "en"), c(3, 12, "en")];
        let mut v = all.clone();
        spam(3, 0.05).filter(&q(), &mut v).unwrap();
        assert_eq!(
            ids(&v),
            [2, 3],
            "3 reports and no followers is spam; 3 of 100 is not"
        );
        let mut v = all.clone();
        spam(3, 0.01).filter(&q(), &mut v).unwrap();
        assert_eq!(ids(&v), [3]);
        let mut v = all.clone();
        spam(4, 0.0).filter(&q(), &mut v).unwrap();
        assert_eq!(ids(&v), [1, 2, 3]);
    }
}

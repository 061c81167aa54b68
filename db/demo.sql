-- keel demo data: creators, their posts, and a demo user with credits and unlocks.
--
--   psql "$URL" -v ON_ERROR_STOP=1 -v profiles=N -v posts_per_profile=M -f db/demo.sql
--
-- Knobs (psql variables, all optional):
--   profiles           number of creator profiles        (default 1000)
--   posts_per_profile  posts stored for each profile     (default 10)
--   batch_rows         rows per INSERT statement/commit  (default 200000)
--
-- Deterministic: every value is a function of the row's index (hashint8 of
-- the index, or arithmetic on it), so two loads of the same size produce the
-- same rows; only times are relative to now().  Profile i is the same
-- profile whatever N is, so loading a larger N later only adds rows.
-- Idempotent: ids are derived from the index and every INSERT is ON CONFLICT
-- DO NOTHING; batches whose last row exists are skipped without work; the
-- demo user's grant and unlocks are written only when missing, so the
-- wallet and its ledger always agree.
--
-- Everything runs server-side as INSERT ... SELECT over generate_series, one
-- transaction per batch.  Helper functions live in pg_temp and vanish with
-- the session: this script creates and drops nothing in the schema.

\set QUIET on
\if :{?profiles}
\else
\set profiles 1000
\endif
\if :{?posts_per_profile}
\else
\set posts_per_profile 10
\endif
\if :{?batch_rows}
\else
\set batch_rows 200000
\endif

-- Losing the last few batches in a crash is harmless here (re-run the
-- script); waiting for a WAL flush per batch is not free.
SET synchronous_commit = off;
SET client_min_messages = warning;
-- The row generators' expressions are large and the planner cannot know
-- generate_series' size: JIT would spend seconds compiling every batch.
SET jit = off;

------------------------------------------------------------------ helpers
-- A uniform double in [0, 1) for (index, stream): stream k gives an
-- independent value for the same row.
CREATE FUNCTION pg_temp.u(i bigint, k int) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8(i * 64 + k)::bigint + 2147483648) / 4294967296.0 $$;

-- Picks an element of arr with a uniform value.
CREATE FUNCTION pg_temp.pick(arr text[], x double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT arr[1 + floor(x * array_length(arr, 1))::int] $$;

-- Version-4-shaped UUIDs that grow with the index, so the primary key
-- indexes fill at their right edge instead of at random pages.
CREATE FUNCTION pg_temp.profile_id(i bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ('de000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid $$;

CREATE FUNCTION pg_temp.post_id(g bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ('de000001-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid $$;

-- Content niches: index 0..7.
CREATE FUNCTION pg_temp.niche(i bigint) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT floor(pg_temp.u(i, 1) * 8)::int $$;

CREATE FUNCTION pg_temp.niche_name(n int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (ARRAY['Fitness','Travel','Food','Fashion','Tech','Beauty','Gaming','Music'])[n + 1] $$;

-- Followers: a Pareto tail (alpha 1.15) above 1,200, so most creators are
-- small and a handful have tens of millions.
CREATE FUNCTION pg_temp.followers(i bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT least(floor(1200 * power(1 - pg_temp.u(i, 2), (-1 / 1.15)::float8)), 400000000)::bigint $$;

-- Engagement rate in percent: high for small accounts, lower for big ones.
CREATE FUNCTION pg_temp.engagement(i bigint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT round(((0.8 + 7.5 * power(pg_temp.u(i, 3), 2))
                   / (1 + 0.45 * greatest(log(pg_temp.followers(i)::float8) - 3.5, 0)))::numeric, 2)::double precision $$;

CREATE FUNCTION pg_temp.ai(i bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_temp.u(i, 4) < 0.6 $$;

-- The profile's main language: English for a little over half.
CREATE FUNCTION pg_temp.language(i bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN pg_temp.u(i, 5) < 0.55 THEN 'en'
                  ELSE pg_temp.pick(ARRAY['es','pt','de','fr','it','ja','ko','id'], pg_temp.u(i, 6)) END $$;

CREATE FUNCTION pg_temp.first_name(i bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_temp.pick(ARRAY['anna','maria','sofia','emma','olivia','lena','mia','zoe','chloe',
                                'nina','lucas','liam','noah','leo','max','ethan','omar','diego','kai',
                                'yuki','aisha','priya','fatima','sara','julia','clara','ivan','marco',
                                'hugo','felix','amir','tom','jack','lily','ella','rosa','ines','paulo',
                                'kenji','mateo'], pg_temp.u(i, 7)) $$;

CREATE FUNCTION pg_temp.last_name(i bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_temp.pick(ARRAY['smith','garcia','muller','rossi','silva','kowalski','nguyen','kim',
                                'tanaka','patel','johnson','lopez','martin','bernard','novak','jensen',
                                'costa','moreau','fischer','santos','ali','khan','cohen','dubois',
                                'weber','ricci','sato','park','chen','wong'], pg_temp.u(i, 8)) $$;

-- A word for the profile's niche, as creators put one in their handle.
CREATE FUNCTION pg_temp.niche_word(i bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (ARRAY['fitness','fit','gym','travel','wander','nomad','food','eats','chef','style',
                    'fashion','ootd','tech','dev','gadget','beauty','glow','makeup','gaming','gamer',
                    'plays','music','beats','sings'])[pg_temp.niche(i) * 3 + 1 + floor(pg_temp.u(i, 9) * 3)::int] $$;

-- fitness.anna42, anna.fitness42, anna_kowalski42 or anna.kowalski42.  The
-- index ends every name, right after a letter, so names never collide.
CREATE FUNCTION pg_temp.username(i bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE floor(pg_temp.u(i, 10) * 4)::int
                 WHEN 0 THEN pg_temp.niche_word(i) || '.' || pg_temp.first_name(i)
                 WHEN 1 THEN pg_temp.first_name(i) || '.' || pg_temp.niche_word(i)
                 WHEN 2 THEN pg_temp.first_name(i) || '_' || pg_temp.last_name(i)
                 ELSE pg_temp.first_name(i) || '.' || pg_temp.last_name(i)
             END || i::text $$;

------------------------------------------------------------------ profiles
CREATE FUNCTION pg_temp.demo_profiles(lo bigint, hi bigint) RETURNS text
LANGUAGE sql
AS $$
WITH src AS (
    SELECT i,
           pg_temp.username(i) AS username,
           pg_temp.niche(i) AS niche,
           pg_temp.followers(i) AS followers,
           pg_temp.engagement(i) AS er,
           pg_temp.ai(i) AS ai,
           pg_temp.language(i) AS lang
    FROM generate_series(lo, hi) AS i
), ins AS (
    INSERT INTO profiles (id, username, full_name, biography, followers_count, following_count,
                          posts_count, is_verified, is_private, profile_pic_url, engagement_rate,
                          avg_likes, avg_comments, ai_analyzed, ai_primary_content_type,
                          ai_avg_sentiment_score, ai_content_distribution, ai_language_distribution,
                          ai_content_quality_score, ai_analyzed_at, created_at, updated_at)
    SELECT pg_temp.profile_id(i),
           username,
           initcap(pg_temp.first_name(i)) || ' ' || initcap(pg_temp.last_name(i)),
           (ARRAY['Personal trainer. Strength, mobility, no excuses.', 'Home workouts & healthy habits',
                  'Marathon runner and coffee addict',
                  'Chasing sunsets on every continent', 'Slow travel, long trains, good maps',
                  'Backpacker sharing budget guides',
                  'Recipes you can cook on a weeknight', 'Street food hunter', 'Chef. Sourdough evangelist.',
                  'Everyday outfits, honest reviews', 'Sustainable fashion, vintage finds',
                  'Stylist. Capsule wardrobes.',
                  'Gadget reviews without the hype', 'Software engineer building in public',
                  'Desk setups and productivity',
                  'Skincare routines that work', 'Makeup artist. Tutorials every Friday.',
                  'Clean beauty, real skin',
                  'Streaming daily. Speedruns and chaos.', 'Indie games and retro consoles',
                  'Competitive FPS coach',
                  'Singer-songwriter. New single out now.', 'Producer. Beats and breakdowns.',
                  'Guitar covers and loop pedals'])[niche * 3 + 1 + floor(pg_temp.u(i, 12) * 3)::int]
               || ' · ' || pg_temp.pick(ARRAY['Lisbon','Berlin','New York','Tokyo','São Paulo','Paris',
                                              'Seoul','London','Los Angeles','Mexico City','Sydney',
                                              'Cape Town','Dubai','Toronto','Milan','Bali'], pg_temp.u(i, 13))
               || CASE WHEN pg_temp.u(i, 14) < 0.4 THEN ' · Collabs: ' || username || '@mail.example.com' ELSE '' END,
           followers,
           floor(40 + power(pg_temp.u(i, 15), 2) * 3000)::bigint,
           floor(12 + power(pg_temp.u(i, 16), 1.5) * 2500)::bigint,
           followers > 1000000 OR (followers > 100000 AND pg_temp.u(i, 17) < 0.35),
           pg_temp.u(i, 18) < 0.03,
           'https://cdn.example.com/profiles/' || username || '.jpg',
           er,
           round(followers * er / 100 * 0.97),
           round((followers * er / 100 * 0.03)::numeric, 1),
           ai,
           CASE WHEN ai THEN pg_temp.niche_name(niche) END,
           CASE WHEN ai THEN round((0.3 + 0.55 * (pg_temp.u(i, 19) + pg_temp.u(i, 20) - 1))::numeric, 3) END,
           CASE WHEN ai THEN (
               WITH d AS (SELECT round((0.5 + 0.35 * pg_temp.u(i, 21))::numeric, 2) AS p1,
                                 round((0.6 * pg_temp.u(i, 22))::numeric, 2) AS s)
               SELECT jsonb_build_object(pg_temp.niche_name(niche), p1,
                                         pg_temp.niche_name((niche + 1 + floor(pg_temp.u(i, 23) * 7)::int) % 8),
                                         round((1 - p1) * s, 2),
                                         'Lifestyle', 1 - p1 - round((1 - p1) * s, 2))
               FROM d) END,
           CASE WHEN ai THEN (
               WITH d AS (SELECT round((0.62 + 0.35 * pg_temp.u(i, 24))::numeric, 2) AS p1)
               SELECT jsonb_build_object(lang, p1, CASE WHEN lang = 'en' THEN 'es' ELSE 'en' END, 1 - p1)
               FROM d) END,
           CASE WHEN ai THEN round((4.5 + 5.4 * pg_temp.u(i, 25))::numeric, 1) END,
           CASE WHEN ai THEN now() - make_interval(secs => pg_temp.u(i, 26) * 60 * 86400) END,
           -- Created before any analysis (last 60 days) or update (last 30).
           now() - make_interval(secs => (60 + pg_temp.u(i, 27) * 700) * 86400),
           now() - make_interval(secs => pg_temp.u(i, 28) * 30 * 86400)
    FROM src
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT format('profiles %s..%s: %s new', lo, hi, count(*)) FROM ins
$$;

------------------------------------------------------------------ posts
-- Shortcodes: 11 characters of URL-safe base64, like Instagram's, which
-- encode a media id that grows with time.  Here the id grows with the
-- post's global index (spaced by a prime so neighbours differ in more than
-- the last character): unique by construction, and new keys land near the
-- previous ones in the unique index instead of on random pages.
CREATE FUNCTION pg_temp.shortcode(g bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT rtrim(translate(encode(int8send(3141592653589793 * 512 + g * 104729), 'base64'), '+/', '-_'), '=') $$;

CREATE FUNCTION pg_temp.demo_posts(lo bigint, hi bigint, per int) RETURNS text
LANGUAGE sql
AS $$
-- The profile's own values once per profile, not once per post.
WITH profile AS MATERIALIZED (
    SELECT i,
           pg_temp.niche(i) AS niche,
           pg_temp.followers(i) AS followers,
           pg_temp.engagement(i) AS er,
           pg_temp.ai(i) AS ai,
           pg_temp.language(i) AS lang
    FROM generate_series(lo, hi) AS i
), expanded AS (
    -- In the select list, the series keeps each profile's posts together
    -- and in order, so ids and index keys arrive ascending.
    SELECT profile.*, generate_series(1, per) AS j FROM profile
), src AS (
    SELECT *, (i - 1) * per + j AS g FROM expanded
), scored AS (
    SELECT *,
           -- Likes scatter around the profile's average (a few posts go viral).
           floor(followers * er / 100 * (0.35 + 1.3 * power(pg_temp.u(g, 42), 2)
                                         + CASE WHEN pg_temp.u(g, 43) < 0.02 THEN 4 ELSE 0 END))::bigint AS likes,
           -- Post topics follow the profile's niche four times out of five.
           CASE WHEN pg_temp.u(g, 44) < 0.8 THEN niche ELSE floor(pg_temp.u(g, 45) * 8)::int END AS topic,
           round((0.35 + 0.6 * (pg_temp.u(g, 46) + pg_temp.u(g, 47) - 1))::numeric, 3) AS sentiment,
           pg_temp.shortcode(g) AS shortcode,
           -- Spread over the last year; a profile's posts are not in index order.
           now() - make_interval(secs => pg_temp.u(g, 51) * 365 * 86400) AS taken_at
    FROM src
), ins AS (
    INSERT INTO posts (id, profile_id, shortcode, caption, likes_count, comments_count, engagement_rate,
                       display_url, taken_at, ai_analyzed, ai_content_category, ai_sentiment,
                       ai_sentiment_score, ai_language_code, created_at)
    SELECT pg_temp.post_id(g),
           pg_temp.profile_id(i),
           shortcode,
           (ARRAY['Leg day done. Who else trains fasted?', 'New PR on deadlifts today',
                  '20 minute mobility flow, save it for later', 'Rest days are part of the plan',
                  'Golden hour from the ridge', 'Three days, one backpack, zero regrets',
                  'Hidden beach you need to see', 'Sunrise train through the mountains',
                  'Weeknight pasta in 15 minutes', 'Tried every taco on this street',
                  'Sourdough, day 4 of the starter', 'Brunch that is worth the queue',
                  'Three ways to style one blazer', 'Thrift haul of the month',
                  'Outfit of the day, rainy edition', 'Autumn capsule wardrobe',
                  'Unboxing the new flagship', 'My desk setup, finally finished',
                  'Is this laptop worth it? Full review', 'Shipping a side project tonight',
                  'Morning skincare routine', 'Glass skin in five steps',
                  'Soft glam tutorial', 'Products I repurchase every time',
                  'Clutch of the week', 'Retro night on the old console',
                  'Ranked grind continues', 'Speedrun attempt #214',
                  'Studio session vibes', 'Acoustic cover, request yours below',
                  'New beat dropping Friday', 'Live at the club last night'])[topic * 4 + 1 + floor(pg_temp.u(g, 48) * 4)::int]
               || ' #' || lower(pg_temp.niche_name(topic)) || ' #' ||
               pg_temp.pick(ARRAY['instagood','photooftheday','reels','explore','weekend','creator',
                                  'dailyinspo','behindthescenes'], pg_temp.u(g, 49)),
           likes,
           floor(likes * (0.005 + 0.035 * pg_temp.u(g, 50)))::bigint,
           round(((likes * (1.005 + 0.035 * pg_temp.u(g, 50))) * 100.0 / greatest(followers, 1))::numeric, 2),
           'https://cdn.example.com/posts/' || shortcode || '.jpg',
           taken_at,
           ai,
           CASE WHEN ai THEN pg_temp.niche_name(topic) END,
           CASE WHEN ai THEN CASE WHEN sentiment > 0.25 THEN 'positive'
                                  WHEN sentiment < -0.1 THEN 'negative' ELSE 'neutral' END END,
           CASE WHEN ai THEN sentiment END,
           CASE WHEN ai THEN CASE WHEN pg_temp.u(g, 52) < 0.85 THEN lang
                                  ELSE CASE WHEN lang = 'en' THEN 'es' ELSE 'en' END END END,
           -- Stored some time after it was posted.
           taken_at + (now() - taken_at) * pg_temp.u(g, 53)
    FROM scored
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT format('posts of profiles %s..%s: %s new', lo, hi, count(*)) FROM ins
$$;

------------------------------------------------------------------ load
\echo loading :profiles profiles with :posts_per_profile posts each
\timing on
\pset tuples_only on
\pset format unaligned

-- One statement (one transaction) per batch.  A batch whose last row
-- already exists was loaded by an earlier run and is skipped.
SELECT format('SELECT pg_temp.demo_profiles(%s, %s)', lo, hi)
FROM (SELECT b * step + 1 AS lo, least((b + 1) * step, :profiles) AS hi
      FROM (SELECT greatest(:batch_rows, 1) AS step) s,
           generate_series(0, (:profiles - 1) / greatest(:batch_rows, 1)) AS b) r
WHERE NOT EXISTS (SELECT 1 FROM profiles WHERE id = pg_temp.profile_id(hi))
ORDER BY lo
\gexec

SELECT format('SELECT pg_temp.demo_posts(%s, %s, %s)', lo, hi, :posts_per_profile)
FROM (SELECT b * step + 1 AS lo, least((b + 1) * step, :profiles) AS hi
      FROM (SELECT greatest(:batch_rows / greatest(:posts_per_profile, 1), 1) AS step) s,
           generate_series(0, (:profiles - 1) / greatest(:batch_rows / greatest(:posts_per_profile, 1), 1)) AS b) r
WHERE :posts_per_profile > 0
  AND NOT EXISTS (SELECT 1 FROM posts WHERE id = pg_temp.post_id(hi * :posts_per_profile))
ORDER BY lo
\gexec

------------------------------------------------------------------ demo user
-- The user that ./dev run's printed token belongs to.  The wallet ends at
-- 1000 credits: a 1125-credit grant, then five unlocks at 25 each, every
-- step in the ledger with the balance after it.
\set demo_sub '5f0c7a7e-0d6b-4c1e-9d2a-6b1f3c0de001'
\set demo_email 'demo@keel.dev'
BEGIN;

INSERT INTO users (supabase_user_id, email, full_name, status)
VALUES (:'demo_sub', :'demo_email', 'Demo User', 'active')
ON CONFLICT DO NOTHING;
-- A row made earlier by e-mail only (an admin grant, say) is linked the way
-- the user sync would link it.
UPDATE users SET supabase_user_id = :'demo_sub'
WHERE email = :'demo_email' AND supabase_user_id IS NULL;

INSERT INTO credit_wallets (user_id, balance)
SELECT id, 0 FROM users WHERE supabase_user_id = :'demo_sub'
ON CONFLICT DO NOTHING;

WITH g AS (
    UPDATE credit_wallets w SET balance = w.balance + 1125, updated_at = now()
    FROM users u
    WHERE u.id = w.user_id AND u.supabase_user_id = :'demo_sub'
      AND NOT EXISTS (SELECT 1 FROM credit_transactions t
                      WHERE t.user_id = u.id AND t.kind = 'grant' AND t.reference = 'demo-seed')
    RETURNING w.user_id, w.balance
)
INSERT INTO credit_transactions (user_id, amount, balance_after, kind, reason, reference, created_at)
SELECT user_id, 1125, balance, 'grant', 'Demo welcome credits', 'demo-seed', now() - interval '2 hours'
FROM g;

-- Five unlocks of the first profiles, a minute apart, each 30 days long.
WITH u AS (
    SELECT id FROM users WHERE supabase_user_id = :'demo_sub'
), granted AS (
    INSERT INTO user_profile_access (user_id, profile_id, granted_at, expires_at, credits_spent)
    SELECT u.id, p.id, now() - make_interval(mins => k), now() - make_interval(mins => k) + interval '30 days', 25
    FROM u, generate_series(1, 5) AS k
    JOIN profiles p ON p.id = pg_temp.profile_id(k)
    ON CONFLICT DO NOTHING
    RETURNING user_id, profile_id, granted_at
), ordered AS (
    SELECT g.user_id, g.granted_at, p.username,
           row_number() OVER (ORDER BY g.granted_at) AS n,
           count(*) OVER () AS total
    FROM granted g JOIN profiles p ON p.id = g.profile_id
), debit AS (
    UPDATE credit_wallets w SET balance = w.balance - 25 * o.total, updated_at = now()
    FROM (SELECT DISTINCT user_id, total FROM ordered) o
    WHERE w.user_id = o.user_id
    RETURNING w.user_id, w.balance + 25 * o.total AS before
)
INSERT INTO credit_transactions (user_id, amount, balance_after, kind, reason, reference, created_at)
SELECT o.user_id, -25, d.before - 25 * o.n, 'unlock', 'Profile unlock', o.username, o.granted_at
FROM ordered o JOIN debit d ON d.user_id = o.user_id;

COMMIT;

\pset tuples_only off
\pset format aligned
\timing off
ANALYZE profiles;
ANALYZE posts;

SELECT u.email, w.balance,
       (SELECT count(*) FROM user_profile_access a WHERE a.user_id = u.id AND a.expires_at > now()) AS unlocks,
       (SELECT total FROM stats_counters WHERE name = 'profiles') AS profiles,
       (SELECT total FROM stats_counters WHERE name = 'posts') AS posts
FROM users u JOIN credit_wallets w ON w.user_id = u.id
WHERE u.supabase_user_id = :'demo_sub';

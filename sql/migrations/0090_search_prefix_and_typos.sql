-- Why: shoppers type the start of a word ("sneak") or misspell it ("snekers"); full-text
-- search alone finds neither. Prefix matching is done in the query (each lexeme of the
-- websearch query becomes a prefix); typo tolerance needs trigram similarity of the
-- title. pg_trgm (a trusted contrib extension) provides it with a GIN index; Debian's
-- PostgreSQL ships it, the embedded `pgserver` build does not, so there the same
-- function is defined in plain SQL (a per-word trigram Jaccard similarity, no index).
-- The catalog only ever calls typo_similarity(query, title).
DO $migration$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX products_title_trgm_idx ON products USING gin (lower(title) gin_trgm_ops);
        CREATE FUNCTION typo_similarity(query text, title text) RETURNS real
            LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $f$ SELECT word_similarity(lower(query), lower(title)) $f$;
    ELSE
        CREATE FUNCTION search_trigrams(word text) RETURNS text[]
            LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $f$
            SELECT coalesce(array_agg(DISTINCT substr(padded, i, 3)), '{}')
            FROM (SELECT '  ' || lower(word) || ' ' AS padded) w,
                 generate_series(1, length(padded) - 2) AS i
            $f$;
        -- For each word of the query, its best Jaccard similarity against the title's
        -- words; the mean over the query's words.
        CREATE FUNCTION typo_similarity(query text, title text) RETURNS real
            LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $f$
            SELECT coalesce(avg(best), 0)::real FROM (
                SELECT max(
                    cardinality(ARRAY(SELECT unnest(search_trigrams(q)) INTERSECT SELECT unnest(search_trigrams(t))))::real
                    / greatest(cardinality(ARRAY(SELECT unnest(search_trigrams(q)) UNION SELECT unnest(search_trigrams(t)))), 1)
                ) AS best
                FROM regexp_split_to_table(query, '[^[:alnum:]]+') AS q,
                     regexp_split_to_table(title, '[^[:alnum:]]+') AS t
                WHERE q <> '' AND t <> ''
                GROUP BY q
            ) per_word
            $f$;
    END IF;
END
$migration$;

-- Why: a checkout takes its stock as its last statement and sends it with COMMIT in one
-- message, so the variant row locks of a drop are held inside PostgreSQL only, never
-- across a round trip to the server (commerce/checkout.py, server/db.py HotTransaction).
-- One function call takes every line's stock in the order given (variant id order, the
-- project's lock order) and raises SQLSTATE 'SS001' naming the first short variant, which
-- aborts the transaction and skips the COMMIT after it.
CREATE FUNCTION take_stock(variant_ids uuid[], qtys int[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(variant_ids, 1), 0) LOOP
        UPDATE product_variants SET stock = stock - qtys[i]
        WHERE id = variant_ids[i] AND stock >= qtys[i];
        IF NOT FOUND THEN
            RAISE EXCEPTION 'not enough stock' USING ERRCODE = 'SS001', DETAIL = variant_ids[i]::text;
        END IF;
    END LOOP;
END
$$;

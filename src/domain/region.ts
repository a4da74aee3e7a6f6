/** Region ids BCC knows (bcc-api.md §1). A deployment serves a subset of them. */
export const KNOWN_REGIONS = ['bj', 'gz', 'su', 'hkg', 'fwh', 'bd', 'cd', 'sin', 'fsh'] as const;

export const isKnownRegion = (r: string): boolean => (KNOWN_REGIONS as readonly string[]).includes(r);

/** Zones are `cn-{region}-a` .. `cn-{region}-d` here; the first is the default. */
export const zonesOf = (region: string): string[] => ['a', 'b', 'c', 'd'].map((z) => `cn-${region}-${z}`);
export const defaultZone = (region: string): string => `cn-${region}-a`;

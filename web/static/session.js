// Who the signed-in token is ({token_id, owner, role, project}) and what
// it may do: the console shows only the actions the role allows (the API
// refuses the others anyway).
export const session = { me: null };
export const can = {
  operate: () => ["operator", "admin"].includes(session.me?.role),
  admin: () => session.me?.role === "admin",
};
